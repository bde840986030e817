"""What the writer adds to hits, over real HTTP on both stores: bots, browser, OS, device, country and
city from a real MaxMind-format database (conftest's geoip); and the example reports over those fields."""

import configparser
import os
import subprocess
from pathlib import Path

import pytest

from mongol.enrich import Enricher, scrub
from mongol.tracking import Tracking
from tests.conftest import BIN, by_url, http_get, stored
from tests.test_report import read_jsonp, report

ROOT = Path(__file__).parent.parent
AGENTS = {
    "chrome": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/130.0.0.0 Safari/537.36", ("Chrome", "Windows", "Other"), False),
    "iphone": ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
               "Version/17.5 Mobile/15E148 Safari/604.1", ("Mobile Safari", "iOS", "iPhone"), False),
    "pixel": ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/130.0.6723.58 Mobile Safari/537.36", ("Chrome Mobile", "Android", "Pixel 8"), False),
    "firefox": ("Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
                ("Firefox", "Linux", "Other"), False),
    "googlebot": ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                  ("Googlebot", "Other", "Spider"), True),
    "gptbot": ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
               ("GPTBot", "Other", "Spider"), True),
    "curl": ("curl/8.5.0", ("curl", "Other", "Other"), True),
    "requests": ("python-requests/2.32.3", ("Python Requests", "Other", "Other"), True),
    "headless": ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 "
                 "Safari/537.36", ("HeadlessChrome", "Linux", "Other"), True),
    "none": ("", ("Other", "Other", "Other"), False),
}




@pytest.fixture
def serve(start_server, store_uri, store, tmp_path):
    def start(*args):
        return start_server("--db", store_uri, "--spool", str(tmp_path / "spool"), "--flush-interval", "0.05",
                            "--trusted-proxy", "127.0.0.1", *args)
    return start


def get(server, query, ua="", ip="203.0.113.9", **headers):
    status, _, _ = http_get(f"{server.url}/p.gif?{query}", {"User-Agent": ua, "X-Forwarded-For": ip, **headers})
    assert status == 200


def test_user_agent_gives_bot_browser_os_and_device(serve, store):
    server = serve()
    for name, (ua, _, _) in AGENTS.items():
        get(server, f"site=a&url=/{name}", ua=ua)
    hits = by_url(store, len(AGENTS))
    for name, (ua, (browser, system, device), bot) in AGENTS.items():
        hit = hits[f"/{name}"]
        assert hit["_ua"] == ua
        assert (hit["_browser"], hit["_os"], hit["_device"]) == (browser, system, device), name
        assert hit.get("_bot", False) is bot, name
        assert "_bot" in hit or not bot  # only bots carry the field


def test_drop_bots(serve, store):
    server = serve("--drop-bots")
    for name, (ua, _, _) in AGENTS.items():
        get(server, f"site=a&url=/{name}", ua=ua)
    humans = {f"/{name}" for name, (_, _, bot) in AGENTS.items() if not bot}
    assert server.signal() == 0  # everything spooled is stored, or dropped, by then
    assert {h["url"] for h in store.hits()} == humans


def test_no_ua_parse_stores_hits_as_spooled(serve, store):
    server = serve("--no-ua-parse")
    get(server, "site=a&url=/bot", ua=AGENTS["googlebot"][0])
    [hit] = stored(store, 1)
    assert not {"_bot", "_browser", "_os", "_device"} & set(hit)


def test_places_from_a_maxmind_database(serve, store, geoip):
    server = serve("--geoip", str(geoip))
    get(server, "site=a&url=/hamburg", ip="203.0.113.9")
    get(server, "site=a&url=/berlin", ip="203.0.113.200")  # its anonymised address is in Hamburg's block
    get(server, "site=a&url=/france", ip="198.51.100.7")
    get(server, "site=a&url=/tokyo", ip="2001:db8:1:2::77")
    get(server, "site=a&url=/nowhere", ip="192.0.2.1")
    get(server, "site=a&url=/dnt", ip="203.0.113.200", DNT="1")
    hits = by_url(store, 6)
    places = {url: (h.get("_country"), h.get("_city")) for url, h in hits.items()}
    assert places == {"/hamburg": ("DE", "Hamburg"), "/berlin": ("DE", "Berlin"), "/france": ("FR", None),
                      "/tokyo": ("JP", "Tokyo"), "/nowhere": (None, None), "/dnt": ("DE", "Berlin")}
    assert {h["_ip"] for h in hits.values()} == {"203.0.113.0", "198.51.100.0", "2001:db8:1::", "192.0.2.0"}
    assert not [h for h in hits.values() if "_geo_ip" in h]  # the full address never reaches the store


def test_places_with_full_ip(serve, store, geoip):
    server = serve("--geoip", str(geoip), "--full-ip", "--no-ua-parse")
    get(server, "site=a&url=/berlin", ip="203.0.113.200")
    [hit] = stored(store, 1)
    assert (hit["_ip"], hit["_country"], hit["_city"]) == ("203.0.113.200", "DE", "Berlin")
    assert "_geo_ip" not in hit and "_browser" not in hit


@pytest.mark.parametrize("content", [None, b"not a database"])
def test_bad_geoip_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "geo.mmdb"
    if content is not None:
        path.write_bytes(content)
    result = subprocess.run([str(BIN / "mongol-serve"), "127.0.0.1:0", "--geoip", str(path)], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL,
                            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"mongol-serve: error: cannot read the GeoIP database {path}")


def test_drop_bots_needs_the_user_agent_read(tmp_path):
    result = subprocess.run([str(BIN / "mongol-serve"), "--drop-bots", "--no-ua-parse"], capture_output=True,
                            text=True, timeout=30, stdin=subprocess.DEVNULL,
                            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)})
    assert result.returncode == 2 and "--drop-bots" in result.stderr and "Traceback" not in result.stderr


def test_without_enrichment_hits_pass_untouched_but_a_spooled_full_address_goes():
    plain = [{"_id": "a", "site": "s", "_ip": "1.2.3.0"}, {"_id": "b", "site": "s"}]
    assert scrub([dict(h) for h in plain]) == plain
    assert scrub([{"_id": "c", "_ip": "1.2.3.0", "_geo_ip": "1.2.3.4"}]) == [{"_id": "c", "_ip": "1.2.3.0"}]


ODD_LINES = [
    {"_id": "1", "site": "s", "_ip": "203.0.113.0", "_ua": AGENTS["iphone"][0], "_geo_ip": "203.0.113.200"},
    {"_id": "2", "_geo_ip": "2001:db8:1::9", "site": "s", "_ip": "2001:db8:1::", "_ua": 'quote " and \\ "'},
    {"_id": "3", "_ua": "caf\u00e9 \u2028 \\\"x\\", "x": '"_ua":"fake', "_ip": "198.51.100.0"},
    {"_id": "4", "site": "no agent", "_ip": "192.0.2.0"},
    {"_id": "5", "_ua": AGENTS["googlebot"][0], "_ip": "203.0.113.0"},
    {"_id": "6", "_ua": "", "_ip": ["not", "a string"]},
    {"_id": "7", "_ua": AGENTS["chrome"][0], "_ip": "::ffff:203.0.113.200", "tags": ["_ua", '"_geo_ip":"x']},
]


@pytest.mark.parametrize("drop_bots", [False, True])
def test_odd_hits_get_their_fields(geoip, drop_bots):
    """Agents and places from the caches, whatever the values hold; `_geo_ip` always goes."""
    enricher = Enricher(Tracking(geoip=geoip, drop_bots=drop_bots))
    got = {hit["_id"]: hit for hit in enricher([dict(hit) for hit in ODD_LINES])}
    assert (got["1"]["_city"], got["1"]["_browser"], got["2"]["_country"], got["7"]["_city"]) == (
        "Berlin", "Mobile Safari", "JP", "Berlin")
    assert "5" not in got if drop_bots else got["5"]["_bot"] is True
    assert not [hit for hit in got.values() if "_geo_ip" in hit]
    assert got["3"]["x"] == '"_ua":"fake' and got["7"]["tags"] == ["_ua", '"_geo_ip":"x']
    assert {k: got["6"][k] for k in ("_browser", "_os", "_device")} == {"_browser": "Other", "_os": "Other",
                                                                         "_device": "Other"}
    assert enricher.dropped == (1 if drop_bots else 0)
    again = enricher([dict(hit) for hit in ODD_LINES])  # from the caches: the same
    assert {hit["_id"]: hit for hit in again} == got


def test_example_reports_read_the_new_fields(serve, store, store_uri, geoip, tmp_path):
    server = serve("--geoip", str(geoip))
    chrome, iphone, bot = AGENTS["chrome"][0], AGENTS["iphone"][0], AGENTS["googlebot"][0]
    get(server, "site=a&url=/&title=Home", ua=chrome, ip="203.0.113.9")
    get(server, "site=a&url=/&title=Home&referrer=https://www.news.example/item?id=1", ua=chrome, ip="203.0.113.9")
    get(server, "site=a&url=/blog&referrer=http://user@Search.example:8080/q", ua=iphone, ip="2001:db8:1::5")
    get(server, "site=a&url=/blog", ua=iphone, ip="198.51.100.3", DNT="1")
    for _ in range(5):
        get(server, "site=a&url=/robots-love-this&referrer=https://spam.example/", ua=bot, ip="203.0.113.200")
    stored(store, 9)
    from tests.test_reportconfig import uncomment_mongodb_only

    example = configparser.ConfigParser(interpolation=None)
    example.read_string(uncomment_mongodb_only((ROOT / "reports.cfg.example").read_text()))
    config = configparser.ConfigParser(interpolation=None)
    config["DEFAULT"] = {"output": str(tmp_path / "out")}
    sections = ["top-pages-humans", "visitors-per-day", "browsers", "countries", "referrers"]
    if store_uri.startswith("mongodb"):
        sections.append("operating-systems")
    for name in sections:
        config[name] = {k: v for k, v in example[name].items() if k not in example.defaults()}
    with open(tmp_path / "reports.cfg", "w") as f:
        config.write(f)
    result = report(tmp_path / "reports.cfg", store_uri)
    assert result.returncode == 0, result.stderr

    def results(name):
        return read_jsonp(tmp_path / "out" / f"{name}.json")

    assert results("top-pages-humans") == [{"_id": {"url": "/", "title": "Home"}, "value": 2},
                                           {"_id": {"url": "/blog"}, "value": 2}]
    [day] = results("visitors-per-day")
    assert day["value"] == 2  # the Chrome visitor twice, the iPhone once; DNT and the bot not counted
    assert results("browsers") == [{"_id": "Chrome", "value": 2}, {"_id": "Mobile Safari", "value": 2}]
    assert results("countries") == [{"_id": "DE", "value": 2}, {"_id": "FR", "value": 1},
                                    {"_id": "JP", "value": 1}]
    assert results("referrers") == [{"_id": "news.example", "value": 1}, {"_id": "search.example", "value": 1}]
    if store_uri.startswith("mongodb"):
        assert results("operating-systems") == [{"_id": "Windows", "value": 2}, {"_id": "iOS", "value": 2}]
