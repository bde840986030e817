"""MongoDB through pymongo: a standalone server, a replica set or a sharded cluster.

The database is the URI's path (`mongol` when it has none), the collection `analytics`.
Write concern, read preference, TLS and timeouts are the URI's own options
(`?w=majority&journal=true`, `&serverSelectionTimeoutMS=2000`, ...), as pymongo reads them.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pymongo
from bson import Code, ObjectId
from pymongo import ASCENDING, MongoClient, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError

from mongol.errors import StoreError, StoreUnavailable
from mongol.stores import Hit

DEFAULT_DATABASE = "mongol"
COLLECTION = "analytics"
# The standard reports (mongol.standard): change numbers, the hours they marked, purge cutoffs, kept days.
COUNTERS, CHANGED, PURGED, DAYS = "mongol_counters", "mongol_changed_hours", "mongol_purged", "mongol_days"
MARKED = "marked-stored-hits"  # a counter document: the hits of an older Mongol have their marks
DUPLICATE_KEY = 11000
SELECTION_TIMEOUT_MS = 5000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class MongoStore:
    blocking = False  # pymongo cooperates with gevent once sockets are patched

    def __init__(self, uri: str) -> None:
        options = {"serverSelectionTimeoutMS": SELECTION_TIMEOUT_MS}
        if "serverselectiontimeoutms" in uri.lower():
            options = {}  # the URI's own setting wins
        try:
            self._client: MongoClient = MongoClient(uri, tz_aware=True, appname="mongol", **options)
            self._db = self._client.get_default_database(DEFAULT_DATABASE)
        except (PyMongoError, ValueError) as exc:  # pymongo says a bad port or host with ValueError
            raise StoreError(f"bad MongoDB URI: {exc}") from exc
        self.collection = self._db[COLLECTION]
        self._timeout: float | None = None
        hosts = ",".join(f"{h}:{p}" for h, p in self._client.topology_description.server_descriptions()) or uri
        self.description = f"MongoDB {hosts}, database {self._db.name}, collection {COLLECTION}"
        try:
            self.ping()
            self.collection.create_index([("time", ASCENDING)])
            self.collection.create_index([("site", ASCENDING), ("time", ASCENDING)])
            self._db[CHANGED].create_index([("site", ASCENDING), ("hour", ASCENDING)], unique=True)
            self._db[DAYS].create_index([("report", ASCENDING), ("day", ASCENDING)], unique=True)
            counters = self._db[COUNTERS]
            if counters.find_one({"name": MARKED}) is None and self.collection.find_one({}, {"_id": 1}) is None:
                counters.update_one({"name": MARKED}, {"$set": {"seq": 0}}, upsert=True)  # no hit to mark
        except StoreError:
            self._client.close()
            raise
        except PyMongoError as exc:
            self._client.close()
            raise StoreUnavailable(f"cannot create the indexes of {self.description}: {exc}") from exc

    def ping(self) -> None:
        try:
            self._db.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable(f"cannot reach {self.description}: {exc}") from exc

    def wait_at_most(self, seconds: float) -> None:
        """Give up on an insert after this long from now on (a stop's deadline)."""
        self._timeout = max(seconds, 0.001)

    def insert_many(self, hits: list[Hit]) -> int:
        docs = [{**hit, "_id": ObjectId(hit["_id"])} for hit in hits]
        try:
            with pymongo.timeout(self._timeout):
                inserted = len(self.collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
                raise
            inserted = exc.details.get("nInserted", 0)
        if docs:
            self._mark_changed(docs)
        return inserted

    def _mark_changed(self, docs: list[dict]) -> None:
        """Mark every (site, hour) of the batch with a new change number, after the hits are in: a report
        that reads a mark then reads its hits. Duplicates are marked too (a replay after a crash between
        the insert and the marks marks them then); marking too much costs a recount, never a wrong one."""
        hours = {(doc["site"] if isinstance(doc.get("site"), str) else "",
                  doc["time"].replace(minute=0, second=0, microsecond=0)) for doc in docs}
        seq = self._db[COUNTERS].find_one_and_update({"name": "changes"}, {"$inc": {"seq": 1}}, upsert=True,
                                                     return_document=ReturnDocument.AFTER)["seq"]
        self._db[CHANGED].bulk_write([UpdateOne({"site": site, "hour": hour}, {"$max": {"seq": seq}}, upsert=True)
                                      for site, hour in hours], ordered=False)

    def insert_records(self, records: list[Hit]) -> int:
        for hit in records:
            hit["time"] = EPOCH + timedelta(microseconds=hit["time"])
        return self.insert_many(records)

    def insert_lines(self, lines: list[bytes]) -> int:
        return self.insert_records([orjson.loads(line) for line in lines])

    @staticmethod
    def _filter(start: datetime | None, end: datetime | None, site: str | None) -> dict:
        query: dict = {}
        if site is not None:
            query["site"] = site
        window = {}
        if start is not None:
            window["$gte"] = start
        if end is not None:
            window["$lt"] = end
        if window:
            query["time"] = window
        return query

    def hits(self, start: datetime | None = None, end: datetime | None = None,
             site: str | None = None) -> Iterator[Hit]:
        for doc in self.collection.find(self._filter(start, end, site)).sort("time", ASCENDING):
            doc["_id"] = str(doc["_id"])
            yield doc

    def count(self, start: datetime | None = None, end: datetime | None = None,
              site: str | None = None, match: dict[str, str | bool] | None = None) -> int:
        query = self._filter(start, end, site)
        if match:
            if any(name.startswith("$") or "." in name or not name for name in match):
                raise ValueError(f"field names must not be empty, start with $ or hold a dot: {list(match)}")
            query = {"$and": [query, *({name: value if value is not False else {"$ne": True}}
                                       for name, value in match.items())]}
        return self.collection.count_documents(query)

    def pageviews_by_page(self, start: datetime | None = None,
                          site: str | None = None) -> Iterator[tuple[dict[str, Any], Any]]:
        group = {"$group": {"_id": {"url": "$url", "title": "$title"}, "value": {"$sum": "$pageviews"}}}
        for doc in self.collection.aggregate([{"$match": self._filter(start, None, site)}, group]):
            yield doc["_id"], doc["value"]

    def aggregate(self, pipeline: list[dict], start: datetime | None = None,
                  site: str | None = None) -> list[dict]:
        """A user's aggregation pipeline, run on the hits of the window (and site) only."""
        return list(self.collection.aggregate([{"$match": self._filter(start, None, site)}, *pipeline]))

    def server_map_reduce(self, mapper: str, reducer: str, finalize: str | None, start: datetime | None = None,
                          site: str | None = None) -> list[tuple[Any, Any]]:
        """The server's own (deprecated, but still present) mapReduce command, results inline."""
        options: dict[str, Any] = {"query": self._filter(start, None, site), "out": {"inline": 1}}
        if finalize:
            options["finalize"] = Code(finalize)
        reply = self._db.command("mapReduce", COLLECTION, map=Code(mapper), reduce=Code(reducer), **options)
        return [(doc["_id"], doc["value"]) for doc in reply["results"]]

    def delete_before(self, cutoff: datetime, site: str | None = None) -> int:
        # before deleting: a kept day older than this is never recomputed from what is left
        self._db[PURGED].update_one({"site": "" if site is None else site}, {"$max": {"cutoff": cutoff}}, upsert=True)
        return self.collection.delete_many(self._filter(None, cutoff, site)).deleted_count

    # The standard reports (mongol.standard) ------------------------------------------------------

    def changed_hours(self, site: str) -> list[tuple[datetime, int]]:
        self._mark_stored_once()
        return [(doc["hour"], doc["seq"]) for doc in self._db[CHANGED].find({"site": site}, {"_id": 0})]

    def _mark_stored_once(self) -> None:
        """Hits stored before there were change marks (an older Mongol) get theirs, once: every hour of
        every site that holds hits is marked with a new change number."""
        counters = self._db[COUNTERS]
        if counters.find_one({"name": MARKED}):
            return
        seq = counters.find_one_and_update({"name": "changes"}, {"$inc": {"seq": 1}}, upsert=True,
                                           return_document=ReturnDocument.AFTER)["seq"]
        since = {"$subtract": ["$time", EPOCH]}
        hours = self.collection.aggregate([{"$group": {"_id": {"site": "$site", "ms": {
            "$subtract": [since, {"$mod": [since, 3_600_000]}]}}}}])
        marks = [UpdateOne({"site": doc["_id"]["site"] if isinstance(doc["_id"].get("site"), str) else "",
                            "hour": EPOCH + timedelta(milliseconds=doc["_id"]["ms"])},
                           {"$max": {"seq": seq}}, upsert=True) for doc in hours]
        if marks:
            self._db[CHANGED].bulk_write(marks, ordered=False)
        counters.update_one({"name": MARKED}, {"$set": {"seq": seq}}, upsert=True)

    def purge_horizon(self, site: str) -> datetime | None:
        cutoffs = [doc["cutoff"] for doc in self._db[PURGED].find({"site": {"$in": ["", site]}})]
        return max(cutoffs, default=None)

    def standard_rows(self, site: str, spans: list[tuple[datetime, datetime, timedelta]]) -> Iterator[tuple]:
        """As SQLiteStore.standard_rows: one $facet over the spans' hits, a $group per figure."""
        from mongol.stores.mongodb_standard import standard_pipeline

        pipeline = standard_pipeline(site, spans)
        for result in self.collection.aggregate(pipeline, allowDiskUse=True):
            for figure, groups in result.items():
                for doc in groups:
                    key = doc["_id"]
                    yield figure.split(".")[0], key["d"], key.get("h"), key.get("k"), doc["n"]

    def kept_days(self, report: str) -> dict[str, tuple[int, list]]:
        return {doc["day"]: (doc["seq"], doc["totals"])
                for doc in self._db[DAYS].find({"report": report}, {"day": 1, "seq": 1, "totals": 1})}

    def kept_docs(self, report: str, first: str, last: str) -> dict[str, dict]:
        query = {"report": report, "day": {"$gte": first, "$lte": last}}
        return {doc["day"]: orjson.loads(doc["doc"]) for doc in self._db[DAYS].find(query, {"day": 1, "doc": 1})}

    def keep_days(self, report: str, days: dict[str, tuple[int, list, dict]]) -> None:
        # the figures as JSON text: keys are any text (a url may hold $ or .), which field names cannot
        self._db[DAYS].bulk_write([UpdateOne({"report": report, "day": day}, {"$set": {
            "seq": seq, "totals": totals, "doc": orjson.dumps(doc).decode()}}, upsert=True)
            for day, (seq, totals, doc) in days.items()], ordered=False)

    def close(self) -> None:
        self._client.close()
