"""What an operator copies from scripts/: the systemd unit passes systemd's own check, and the unit's
and the cron line's commands, run as written (only the install prefix and paths moved into the test's
folder), serve and report."""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mongol.stores import open_store
from tests.conftest import BIN, http_get, launch, stop_all, wait_until

SCRIPTS = Path(__file__).parent.parent / "scripts"
PREFIX = "/opt/mongol/bin/"


def unit_settings() -> dict[str, list[str]]:
    """Each key=value of scripts/mongol-serve.service, the values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for line in (SCRIPTS / "mongol-serve.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def moved(text: str, tmp_path: Path) -> str:
    """An installed path of the scripts, moved into the test: the virtualenv's programs, a folder of the test's."""
    return text.replace(PREFIX, f"{BIN}/").replace("/var/lib/mongol", str(tmp_path / "state"))


def test_the_systemd_unit_passes_systemd_analyze(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    unit = tmp_path / "mongol-serve.service"
    unit.write_text((SCRIPTS / "mongol-serve.service").read_text().replace(PREFIX, f"{BIN}/"))
    checked = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in checked.stderr.splitlines() if "mongol-serve.service" in line]
    assert checked.returncode == 0 and not complaints, checked.stderr


def test_the_units_command_serves_and_the_cron_line_reports(tmp_path):
    settings = unit_settings()
    env = dict(value.split("=", 1) for value in settings["Environment"])
    command = shlex.split(moved(settings["ExecStart"][0], tmp_path))
    assert command[0] == str(BIN / "mongol-serve") and command[1] == "127.0.0.1:8000"
    (tmp_path / "state").mkdir()  # what StateDirectory= makes
    env = {key: moved(value, tmp_path) for key, value in env.items()}
    server = launch("mongol-serve", ["127.0.0.1:0", *command[2:]], tmp_path, tmp_path / "serve.log",
                    r"listening on http://127\.0\.0\.1:(\d+)/", env)
    try:
        status = http_get(f"{server.url}/pixel.gif?title=Home",
                          {"Referer": "https://www.example.com/", "X-Forwarded-For": "203.0.113.9"})[0]
        assert status == 200
        store = open_store(env["MONGOL_DB"])
        try:
            [hit] = wait_until(lambda: list(store.hits(None, None, None)), 10, "the hit stored in the unit's store")
        finally:
            store.close()
        assert hit["site"] == "example.com" and hit["_ip"] == "203.0.113.0"  # the proxy trusted, as the unit says
    finally:
        stop_all([server])

    cron = [line for line in (SCRIPTS / "mongol-report.cron").read_text().splitlines()
            if line and not line.startswith("#")]
    cron_env = dict(line.split("=", 1) for line in cron if "=" in line.split()[0])
    [job] = [line for line in cron if line not in [f"{k}={v}" for k, v in cron_env.items()]]
    fields = job.split(None, 6)
    assert fields[5] == "mongol"  # cron.d names the user, the unit's
    assert cron_env["MONGOL_DB"] == env["MONGOL_DB"].replace(str(tmp_path / "state"), "/var/lib/mongol")
    config = tmp_path / "reports.cfg"
    config.write_text(f"[top]\noutput = {tmp_path / 'www'}\n")
    done = subprocess.run(shlex.split(moved(fields[6], tmp_path).replace("/etc/mongol/reports.cfg", str(config))),
                          env={**os.environ, **{k: moved(v, tmp_path) for k, v in cron_env.items()}},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"url":"/"' in (tmp_path / "www" / "top.json").read_text()


def test_the_unit_raises_the_descriptor_limit():
    """Every connection is a descriptor: systemd's default soft limit of 1024 is too few for the internet."""
    [limit] = unit_settings()["LimitNOFILE"]
    assert int(limit) >= 65536
