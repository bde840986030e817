"""mongol-serve's command line: addresses, stores, errors as one line."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess

import pytest

from mongol.cli.serve import build_parser, parse_address
from mongol.errors import MongolError
from mongol.location import resolve_db_uri
from mongol.stores import open_store
from tests.conftest import BIN, http_get, launch, stop_all, wait_until


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


def test_unreachable_mongodb_is_one_warning_and_the_pixel_serves(tmp_path):
    # A store that does not answer is an outage, not a configuration error: hits wait in the spool
    # (tests/test_reliability.py checks that they are stored once it answers).
    server = launch("mongol-serve", ["127.0.0.1:0", "--db", "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300"],
                    tmp_path, tmp_path / "serve.log", r"listening on http://127\.0\.0\.1:(\d+)/")
    try:
        [line] = [x for x in server.log().splitlines() if "WARNING" in x]
        assert "cannot reach MongoDB 127.0.0.1:1" in line and "serving anyway" in line
        assert http_get(f"{server.url}/p.gif?site=a.org&url=/")[0] == 200
        status, _, body = http_get(server.url + "/healthz")
        assert status == 200 and body.startswith(b"degraded") and b"the store has failed" in body
        assert "Traceback" not in server.log()
    finally:
        stop_all([server])


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


def test_two_servers_cannot_share_a_spool(run, start_server, tmp_path):
    spool = tmp_path / "spool"
    start_server("--db", f"sqlite://{tmp_path}/a.db", "--spool", str(spool))
    for db in ("a.db", "b.db"):  # the same store or another: one writer per spool
        result = run("127.0.0.1:0", "--db", f"sqlite://{tmp_path}/{db}", "--spool", str(spool))
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"mongol-serve: error: the spool {spool} is in use by the writer of another"), line


def test_a_spool_holding_another_stores_hits_is_refused(run, start_server, tmp_path):
    spool, a = tmp_path / "spool", f"sqlite://{tmp_path}/a.db"
    server = start_server("--db", a, "--spool", str(spool), "--workers", "1")
    locker = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # the hits stay in the spool
    assert http_get(f"{server.url}/p.gif?site=a.org&url=/")[0] == 200
    server.proc.kill()
    server.proc.wait()
    locker.execute("ROLLBACK")
    result = run("127.0.0.1:0", "--db", f"sqlite://{tmp_path}/b.db", "--spool", str(spool))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"the spool {spool} holds hits spooled for sqlite:///{tmp_path}/a.db, not sqlite:///{tmp_path}/b.db" in line
    start_server("--db", a, "--spool", str(spool))
    wait_until(lambda: open_store(a).count() == 1, 30, "the hit stored in its own store")


def test_systemd_is_told_when_it_listens_and_sighup_from_then_on_is_safe(tmp_path):
    # The unit is Type=notify: a reload's SIGHUP (logrotate) reaches mongol-serve only after READY=1.
    import socket
    import tempfile

    folder = tempfile.mkdtemp(prefix="mongol-notify-")  # short: a socket's path has at most 107 bytes
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(f"{folder}/notify")
    notify.settimeout(30)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([str(BIN / "mongol-serve"), "127.0.0.1:0", "--db", f"sqlite://{tmp_path}/h.db",
                             "--log-file", str(log)], stdin=subprocess.DEVNULL,
                            env={**os.environ, "NOTIFY_SOCKET": f"{folder}/notify",
                                 "XDG_DATA_HOME": str(tmp_path / "data")})
    try:
        assert notify.recv(100) == b"READY=1"
        assert re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text()), "READY before listening"
        for _ in range(50):
            proc.send_signal(signal.SIGHUP)
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", log.read_text()).group(1)
        assert http_get(f"http://127.0.0.1:{port}/p.gif?site=a.org&url=/")[0] == 200
        assert proc.poll() is None
        proc.terminate()
        assert notify.recv(100) == b"STOPPING=1"
        assert proc.wait(30) == 0
    finally:
        notify.close()
        shutil.rmtree(folder, ignore_errors=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
