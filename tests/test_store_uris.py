"""SQLite store URIs as Python users write them (README, Stores), the same in every program and in every
process of a report; and a store whose folder does not exist, one clear error in every program."""

import os
import subprocess

import pytest

from mongol.errors import StoreError
from mongol.stores import open_store, sqlite_path
from tests.conftest import BIN, http_get, wait_until
from tests.test_report import read_jsonp, write_config


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The current folder of the test and of the programs it starts."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# URI (with TMP for the test's folder) -> the file, relative to the test's folder
FORMS = [
    ("sqlite:////TMP/a/hits.db", "a/hits.db"),              # SQLAlchemy's absolute form
    ("sqlite://///TMP/a/hits.db", "a/hits.db"),             # one slash too many is still absolute
    ("sqlite:///TMP/a/hits.db", "a/hits.db"),               # Mongol's documented absolute form
    ("sqlite:///hits.db", "work/hits.db"),                  # SQLAlchemy's relative form
    ("sqlite:///./sub/hits.db", "work/sub/hits.db"),
    ("sqlite:///../up.db", "up.db"),
]


@pytest.mark.parametrize(("uri", "where"), FORMS)
def test_sqlite_uri_forms(tmp_path, work, uri, where):
    assert sqlite_path(uri.replace("/TMP", str(tmp_path))) == str(tmp_path / where)


def test_a_tilde_is_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sqlite_path("sqlite:///~/m.db") == str(tmp_path / "m.db")


@pytest.mark.parametrize(("uri", "message"), [
    ("sqlite://", "names no file"),
    ("sqlite:///", "names no file"),
    ("sqlite:", "names no file"),
    ("sqlite://data/m.db", r"has a host part \('data'\), which SQLite has not: write sqlite:////abs/path/file.db"),
    ("sqlite:m.db", "is not of the form sqlite:////abs/path/file.db"),
    ("sqlite:///m.db?mode=ro", r"has options \(\?mode=ro\)"),
])
def test_bad_sqlite_uris(uri, message):
    with pytest.raises(StoreError, match=message):
        sqlite_path(uri)


CUSTOM = """[by-n]
output = OUT
mapper = function () { emit(this.n, 1); }
reducer = function (key, values) { return Array.sum(values); }
limit = 0
"""


@pytest.mark.slow
@pytest.mark.parametrize(("uri", "where"), FORMS)
def test_each_form_through_serve_and_a_custom_javascript_report(tmp_path, work, start_server, uri, where):
    """mongol-serve stores the hits where the table says, and mongol-report's workers (which open the file
    themselves for a custom JavaScript section) read the same file."""
    uri = uri.replace("/TMP", str(tmp_path))
    (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    server = start_server("--db", uri)
    sent = {str(i) for i in range(25)}
    for n in sent:
        assert http_get(f"{server.url}/pixel.gif?site=example.com&url=/p&n={n}")[0] == 200
    assert (tmp_path / where).exists()
    store = open_store(f"sqlite:///{tmp_path / where}")
    try:
        wait_until(lambda: store.count() == len(sent), what="the hits stored")
        assert {hit["n"] for hit in store.hits()} == sent
    finally:
        store.close()
    config = write_config(tmp_path, CUSTOM)
    result = subprocess.run([str(BIN / "mongol-report"), str(config), "--db", uri], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stderr) == (0, "")
    rows = read_jsonp(tmp_path / "out" / "by-n.json")
    assert {row["_id"] for row in rows} == sent and {row["value"] for row in rows} == {1}


@pytest.mark.parametrize("program", ["mongol-serve", "mongol-ingest", "mongol-report", "mongol-check"])
def test_a_missing_folder_is_one_clear_error_in_every_program(tmp_path, work, program):
    missing = tmp_path / "no" / "such"
    uri = f"sqlite:///{missing}/hits.db"
    args = {"mongol-serve": ["127.0.0.1:0", "--db", uri], "mongol-ingest": ["127.0.0.1:0", "--db", uri],
            "mongol-report": [str(write_config(tmp_path, "[s]\noutput = OUT\n")), "--db", uri],
            "mongol-check": ["--db", uri]}[program]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    result = subprocess.run([str(BIN / program), *args], capture_output=True, text=True, timeout=60, env=env,
                            stdin=subprocess.DEVNULL)
    problem = (f"no SQLite store at {missing}/hits.db: its folder {missing} does not exist (from {uri}); "
               "create the folder or correct the URI")
    expected = {"mongol-serve": (1, "", f"mongol-serve: error: {problem}\n"),
                "mongol-ingest": (1, "", f"mongol-ingest: error: {problem}\n"),
                "mongol-report": (1, "", f"mongol-report: {problem}\n"),
                "mongol-check": (3, f"MONGOL UNKNOWN - {problem}\n", "")}[program]
    assert (result.returncode, result.stdout, result.stderr) == expected
    assert not (tmp_path / "no").exists()
