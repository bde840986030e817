"""mongol-serve's command line: addresses, stores, errors as one line."""

import os
import re
import subprocess

import pytest

from mongol.cli.serve import build_parser, parse_address
from mongol.errors import MongolError
from mongol.location import resolve_db_uri
from mongol.stores import open_store
from tests.conftest import BIN, http_get, wait_until


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:8000", ("0.0.0.0", 8000)),
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    (":9000", ("0.0.0.0", 9000)),
    ("9000", ("0.0.0.0", 9000)),
    ("[::1]:9000", ("::1", 9000)),
    ("localhost:0", ("localhost", 0)),
])
def test_address_forms(text, expected):
    assert parse_address(text) == expected


def test_default_address_is_every_interface_port_8000():
    assert parse_address(build_parser().parse_args([]).address) == ("0.0.0.0", 8000)


@pytest.mark.parametrize("text", ["", "host:", "host:port", "1.2.3.4:70000", "-1", "a b:80", "::"])
def test_bad_addresses(text):
    with pytest.raises(MongolError, match="bad address"):
        parse_address(text)


@pytest.fixture
def run(tmp_path):
    def run(*args, env=None, timeout=30):
        env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), **(env or {})}
        return subprocess.run([str(BIN / "mongol-serve"), *args], capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    return run


def test_bad_address_is_one_line_and_exit_2(run):
    result = run("nowhere:port")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mongol-serve: error: bad address 'nowhere:port': expected [host:]port, such as 127.0.0.1:8000, :8000 or 8000"]


def test_unreachable_mongodb_is_one_line_and_exit_1(run):
    result = run("127.0.0.1:0", "--db", "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mongol-serve: error: cannot reach MongoDB 127.0.0.1:1")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("uri", "message"), [
    ("redis://x", "unknown store URI 'redis://x'"),
    ("sqlite:///proc/nope/x.db", "no SQLite store at /proc/nope/x.db: its folder /proc/nope does not exist"),
    ("sqlite:///proc/self/x.db", "cannot open the SQLite store /proc/self/x.db"),
    ("mongodb://h:notaport/x", "bad MongoDB URI: Port contains non-digit characters"),
])
def test_bad_store_is_one_line(run, uri, message):
    result = run("127.0.0.1:0", "--db", uri)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert message in line


def test_port_in_use_is_one_line(run, start_server, tmp_path):
    server = start_server("--db", f"sqlite://{tmp_path}/a.db")
    result = run(f"127.0.0.1:{server.port}", "--db", f"sqlite://{tmp_path}/b.db")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_bad_trusted_proxy(run):
    result = run("--trusted-proxy", "not-an-ip")
    assert result.returncode == 2 and "bad --trusted-proxy 'not-an-ip'" in result.stderr


def test_help_documents_every_option(run):
    result = run("--help")
    assert result.returncode == 0
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout
    assert "address" in result.stdout and "MONGOL_DB" in result.stdout


def test_default_store_is_printed_and_shared(start_server, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("MONGOL_DB", raising=False)
    server = start_server()
    path = tmp_path / "data" / "mongol" / "mongol.db"
    assert f"storing hits in SQLite file {path}" in server.log()
    http_get(server.url + "/p.gif?site=a&url=/")
    assert server.signal() == 0
    store = open_store(resolve_db_uri(None))  # what mongol-report opens by default
    assert store.description == f"SQLite file {path}"
    assert store.count() == 1
    store.close()


def test_mongol_db_environment_variable(start_server, tmp_path):
    server = start_server(env={"MONGOL_DB": f"sqlite://{tmp_path}/env.db"})
    assert f"SQLite file {tmp_path}/env.db" in server.log()


@pytest.mark.parametrize("address", [":0", "0"])
def test_short_address_forms_listen_on_all_interfaces(tmp_path, address):
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mongol-serve"), address, "--db", f"sqlite://{tmp_path}/a.db"],
                                stdout=out, stderr=out)
    try:
        match = wait_until(lambda: re.search(r"listening on http://0\.0\.0\.0:(\d+)/", log.read_text()), 20,
                           "mongol-serve to listen")
        assert http_get(f"http://127.0.0.1:{match.group(1)}/healthz")[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_access_log(start_server, tmp_path):
    server = start_server("--db", f"sqlite://{tmp_path}/a.db", "--access-log")
    http_get(server.url + "/p.gif?site=a&url=/x")
    http_get(server.url + "/p.gif")
    wait_until(lambda: '"GET /p.gif" 400' in server.log(), 10, "the access log lines")
    assert '127.0.0.1 "GET /p.gif?site=a&url=/x" 200' in server.log()
