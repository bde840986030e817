"""mongol.app:application under another WSGI server (here wsgiref's, checked by wsgiref.validate):
it appends to the spool, and `mongol-serve --workers 0` stores what it appends."""

import subprocess
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.validate import validator

from mongol.app import GIF, _LazyApplication
from mongol.stores import open_store
from tests.conftest import BIN, http_get, stored


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_application_under_another_server_is_drained_by_a_writer_only_mongol_serve(tmp_path, monkeypatch):
    spool, uri = tmp_path / "spool", f"sqlite://{tmp_path}/hits.db"
    monkeypatch.setenv("MONGOL_SPOOL", str(spool))
    monkeypatch.setenv("MONGOL_DB", uri)
    httpd = make_server("127.0.0.1", 0, validator(_LazyApplication()), handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_port}"
        status, headers, body = http_get(url + "/pixel.gif?site=wsgi.org&url=/a&title=A")
        assert (status, headers["content-type"], body) == (200, "image/gif", GIF)
        assert http_get(url + "/x?site=s&url=/")[0] == 200
        assert http_get(url + "/pixel.gif")[0] == 400
        writer = subprocess.Popen([str(BIN / "mongol-serve"), "--workers", "0", "--spool", str(spool), "--db", uri],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store = open_store(uri)
        try:
            hits = {h["url"]: h for h in stored(store, 2)}
        finally:
            writer.terminate()
            assert writer.wait(30) == 0
        assert hits["/a"]["site"] == "wsgi.org" and hits["/a"]["title"] == "A" and hits["/a"]["pageviews"] == 1
        store.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
