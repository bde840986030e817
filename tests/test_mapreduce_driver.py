"""The engine's JavaScript side (mongol/mapreduce/driver.js), checked with Node as any JavaScript file:
its syntax, that it runs in strict mode in another engine (V8), and that it does a map/reduce there."""

import json
import shutil
import subprocess
from importlib.resources import files

import pytest

from mongol.mapreduce.engine import DRIVER

DRIVER_JS = files("mongol.mapreduce").joinpath("driver.js")

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


def test_the_driver_is_the_file_the_engine_reads():
    assert DRIVER_JS.read_text(encoding="utf-8") == DRIVER


def test_node_checks_the_driver_syntax():
    result = subprocess.run(["node", "--check", str(DRIVER_JS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# Evaluate the driver in a fresh V8 context and run a small map/reduce through its globals, as the
# Python side does (install, map a batch, map hits read from a store, finish).
NODE_RUN = r"""
const vm = require("vm"), fs = require("fs");
const ctx = vm.createContext({});
vm.runInContext(fs.readFileSync(process.argv[1], "utf8"), ctx, {filename: "driver.js"});
vm.runInContext(`
  __mongol_install(0, function () { emit(this.url, this.n); });
  __mongol_install(1, function (k, vs) { return Array.sum(vs); });
  __mongol_map(JSON.stringify([{url: "/a", n: 1}, {url: "/b", n: 2}, {url: "/a", n: 3}]));
  __mongol_map_hits(JSON.stringify([[{url: "/b", n: 4}], null, [0]]), false);
  var out = __mongol_finish();
`, ctx);
process.stdout.write(ctx.out);
"""


def test_the_driver_runs_a_map_reduce_in_node():
    result = subprocess.run(["node", "-e", NODE_RUN, str(DRIVER_JS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)) == [["/a", 4], ["/b", 6]]
