"""Hits that follow issue 12's field contract, and the standard figures computed from them in plain Python
(the reference the stores, the files and the dashboard are checked against)."""

import random
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from mongol.hit import new_id

SITE = "example.com"
PAGES = [("/", "Home"), ("/blog", "Blog"), ("/blog/post-1", "First post"), ("/about", None),
         ("/pricing", "Pricing"), ("/search?q=<b>x</b>", "<script>alert(1)</script>")]
SOURCES = [None, None, "news.ycombinator.com", "google.com", "duckduckgo.com"]
CAMPAIGNS = [None, None, None, ("newsletter", "email", "november"), ("twitter", None, None)]
BROWSERS = [("Chrome", "Windows", "Other"), ("Firefox", "Linux", "Other"), ("Mobile Safari", "iOS", "iPhone")]


def make_hits(now: datetime, days: int = 12, seed: int = 12, site: str = SITE, per_hour: int = 3,
              hostile: bool = True) -> list[dict]:
    """Hits of `site` over the last `days` days (and a few of another site): visits that begin on an entry page
    from a source or a campaign and go on internally, events, DNT visitors (no _visitor), bots, countries.
    `hostile`: one page has markup in its url and title (False: for a screenshot)."""
    rnd = random.Random(seed)
    pages = PAGES if hostile else PAGES[:-1]
    hits: list[dict] = []
    start = now - timedelta(days=days)
    when = start
    n = 0
    while when < now - timedelta(minutes=5):
        for _ in range(rnd.randint(0, per_hour)):
            n += 1
            at = when + timedelta(minutes=rnd.randint(0, 59))
            at = min(at, now - timedelta(seconds=n % 50 + 1))
            visitor = None if n % 9 == 0 else f"{rnd.randint(0, 40):016x}"  # DNT: no visitor id
            browser, os_name, device = rnd.choice(BROWSERS)
            base = {"site": site, "_browser": browser, "_os": os_name, "_device": device}
            if visitor:
                base["_visitor"] = visitor
            if n % 4:
                base["_country"] = rnd.choice(["DE", "FR", "JP"])
            if n % 13 == 0:  # a crawler
                hits.append(_hit(at, {**base, "_bot": True, "_device": "Spider", "url": "/", "pageviews": 1}))
                continue
            url, title = rnd.choice(pages)
            entry = {**base, "url": url, "pageviews": 1, **({"title": title} if title else {})}
            source = rnd.choice(SOURCES)
            if source:
                entry["referrer"] = f"https://{source}/x"
                entry["_source"] = source
            campaign = rnd.choice(CAMPAIGNS)
            if campaign:
                for name, value in zip(("utm_source", "utm_medium", "utm_campaign"), campaign, strict=True):
                    if value:
                        entry[name] = value
            if n % 7 == 0:
                entry["screen"] = "390"
            hits.append(_hit(at, entry))
            for step in range(rnd.randint(0, 2)):  # internal navigation
                url2, title2 = rnd.choice(pages)
                hits.append(_hit(at + timedelta(seconds=10 + step), {
                    **base, "url": url2, "pageviews": 1, "_internal": True, **({"title": title2} if title2 else {})}))
            if n % 5 == 0:
                hits.append(_hit(at + timedelta(seconds=30), {**base, "url": url, "pageviews": 0,
                                                                "event": rnd.choice(["signup", "download"])}))
        when += timedelta(hours=1)
    hits.append(_hit(now - timedelta(hours=1), {"site": "other.org", "url": "/", "pageviews": 1, "_visitor": "f" * 16}))
    return hits


def _hit(at: datetime, fields: dict) -> dict:
    return {"_id": new_id(at.timestamp()), "time": at, **fields}


def _rank(counter: Counter) -> list[list]:
    return [[*key, n] for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], repr(kv[0])))]


def expected(hits: list[dict], zone: str = "UTC", site: str = SITE) -> dict[str, dict]:
    """{YYYY-MM-DD: figures} as the standard reports define them, counted one hit at a time."""
    tz = ZoneInfo(zone)
    days: dict[date, list[dict]] = defaultdict(list)
    for h in hits:
        if h["site"] == site:
            days[h["time"].astimezone(tz).date()].append(h)
    out = {}
    for day, day_hits in days.items():
        humans = [h for h in day_hits if not h.get("_bot")]
        views = [h for h in humans if h["pageviews"] > 0]
        entries = [h for h in views if not h.get("_internal")]
        hours: dict[int, list] = defaultdict(lambda: [0, set(), 0])
        for h in day_hits:
            slot = hours[h["time"].astimezone(tz).hour]
            if h.get("_bot"):
                slot[2] += 1
            else:
                slot[0] += h["pageviews"]
                if h["pageviews"] > 0 and "_visitor" in h:
                    slot[1].add(h["_visitor"])
        page_views = Counter(h["url"] for h in views)
        titles: dict[str, Counter] = defaultdict(Counter)
        for h in views:
            if "title" in h:
                titles[h["url"]][h["title"]] += 1
        campaigns = Counter((h.get("utm_source"), h.get("utm_medium"), h.get("utm_campaign")) for h in entries
                            if "utm_source" in h or "utm_campaign" in h)
        out[day.isoformat()] = {
            "pageviews": sum(h["pageviews"] for h in humans),
            "visitors": len({h["_visitor"] for h in views if "_visitor" in h}),
            "bots": sum(1 for h in day_hits if h.get("_bot")),
            "hours": {hour: (pv, len(vis), bots) for hour, (pv, vis, bots) in hours.items()},
            "pages": {url: (n, _best_title(titles.get(url))) for url, n in page_views.items()},
            "entry-pages": dict(Counter(h["url"] for h in entries)),
            "sources": dict(Counter(h.get("_source") for h in entries)),
            "campaigns": dict(campaigns),
            "browsers": dict(Counter(h["_browser"] for h in views)),
            "os": dict(Counter(h["_os"] for h in views)),
            "devices": dict(Counter(h["_device"] for h in views)),
            "countries": dict(Counter(h["_country"] for h in views if "_country" in h)),
            "events": dict(Counter(h["event"] for h in humans if "event" in h)),
        }
    return out


def _best_title(titles: Counter | None) -> str | None:
    if not titles:
        return None
    return max(titles.items(), key=lambda kv: (kv[1], kv[0]))[0]


def now_utc() -> datetime:
    return datetime.now(UTC)
