"""The writer's pace (mongol.writer.Writer.run): a batch that emptied the spool lets the next one
gather for the rest of the interval, a full batch is followed at once by the next. The stop event
is a stand-in that records each wait and appends the next hits meanwhile; spool and store are real."""

from itertools import pairwise

import orjson

from mongol.hit import new_id
from mongol.journal import Journal, Spool
from mongol.stores import open_store
from mongol.writer import Writer


class Script:
    """Writer.run's `stop`: each wait appends the next group of hits; set after the last group."""

    def __init__(self, journal: Journal, groups: list[int]) -> None:
        self.journal, self.groups, self.events, self.sent = journal, list(groups), [], 0

    def is_set(self) -> bool:
        return not self.groups and any(e[0] == "wait" for e in self.events[-1:])

    def wait(self, timeout: float) -> bool:
        self.events.append(("wait", timeout))
        if self.groups:
            for _ in range(self.groups.pop(0)):
                hit = {"_id": new_id(0), "time": 1_796_000_000_000_000 + self.sent, "site": "a.org", "url": "/"}
                self.journal.append(orjson.dumps(hit, option=orjson.OPT_APPEND_NEWLINE))
                self.sent += 1
        return False


def test_a_caught_up_writer_waits_out_its_interval_and_a_full_batch_goes_on_at_once(tmp_path):
    journal = Journal(tmp_path / "spool")
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    writer = Writer(store, Spool(tmp_path / "spool"), batch_size=10, interval=0.5)
    script = Script(journal, [0, 4, 25, 3, 0])
    step = writer.step

    def recorded_step() -> bool:
        busy = step()
        script.events.append(("step", writer.last_batch))
        return busy

    writer.step = recorded_step
    script.wait(0)  # the first group (none) before the writer starts
    script.events.clear()
    writer.run(script, drain_timeout=5)
    journal.close()
    during = script.events[:script.events.index(("step", 3)) + 2]
    kinds = [(kind, value if kind == "step" else round(value, 1)) for kind, value in during]
    # idle: the interval; 4 hits: the rest of the interval; 25 hits: 10, 10 at once, then 5 and a wait
    assert kinds == [("step", 0), ("wait", 0.5), ("step", 4), ("wait", 0.5), ("step", 10), ("step", 10),
                     ("step", 5), ("wait", 0.5), ("step", 3), ("wait", 0.5)]
    waits_after_hits = [b[1] for a, b in pairwise(during) if a[0] == "step" and a[1] and b[0] == "wait"]
    assert len(waits_after_hits) == 3 and all(0 < value <= 0.5 for value in waits_after_hits)
    assert store.count() == 32
    store.close()


def test_lines_that_are_no_hits_are_dropped_with_a_log_line_and_hold_up_nothing(tmp_path, caplog):
    journal = Journal(tmp_path / "spool")
    good = [{"_id": new_id(0), "time": 1_796_000_000_000_000 + n, "site": "a.org", "url": f"/{n}"} for n in range(4)]
    bad = [b"not json", b"[1, 2]", b'{"site": "no id or time"}', b'{"_id": "x", "time": "noon"}',
           b'{"_id": 5, "time": 1}', b'{"_id": "torn", "ti']
    for line in [orjson.dumps(hit) for hit in good] + bad:  # torn: a line a crash cut short, then a new one
        journal.append(line + b"\n")
    journal.close()
    store = open_store(f"sqlite://{tmp_path}/hits.db")
    writer = Writer(store, Spool(tmp_path / "spool"), batch_size=100)
    assert writer.step() and not writer.step()
    assert sorted(h["url"] for h in store.hits()) == ["/0", "/1", "/2", "/3"]
    dropped = [r.getMessage() for r in caplog.records if r.name == "mongol.writer" and "dropping" in r.getMessage()]
    assert len(dropped) == len(bad)
    assert writer.spool.backlog_bytes() == 0
    store.close()
