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
from pymongo import ASCENDING, MongoClient
from pymongo.errors import BulkWriteError, PyMongoError

from mongol.errors import StoreError, StoreUnavailable
from mongol.stores import Hit

DEFAULT_DATABASE = "mongol"
COLLECTION = "analytics"
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
                return len(self.collection.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors) or exc.details.get("writeConcernErrors"):
                raise
            return exc.details.get("nInserted", 0)

    def insert_lines(self, lines: list[bytes]) -> int:
        hits = []
        for line in lines:
            hit = orjson.loads(line)
            hit["time"] = EPOCH + timedelta(microseconds=hit["time"])
            hits.append(hit)
        return self.insert_many(hits)

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
        return self.collection.delete_many(self._filter(None, cutoff, site)).deleted_count

    def close(self) -> None:
        self._client.close()
