#!/usr/bin/env python3
"""A local list API without webhooks, for sluice's polling sources (demo, tests, bench).

It listens on 127.0.0.1 only and lists items (orders) changed since a time, in
`(updated_at, id)` order, in each pagination style sluice supports:

    GET /cursor/items?updated_since=T&limit=N[&cursor=C]   body {"data": [...], "next_cursor": C|null}
    GET /link/items?updated_since=T&limit=N[&cursor=C]     body {"data": [...]}, `Link: <...>; rel="next"`
    GET /page/items?updated_since=T&limit=N&page=P         body {"data": [...]} (P from 1)
    GET /offset/items?updated_since=T&limit=N&offset=O     body {"data": [...]}
    GET /keyset/items?updated_since=T&limit=N[&after_id=I] body {"data": [...]}; with after_id,
                                                           items after (T, I)

`updated_since` is RFC 3339 and inclusive (`>=`). `/page` and `/offset` take `order=desc`
(newest first). An item is
`{"id": "o-000001", "updated_at": "...Z", "version": 1, "status": "...", "amount": 12}`.
Every 200 carries an `ETag`; a request whose `If-None-Match` matches gets 304.
Cursors are opaque and positional (they survive items changing under them).

Faults, set with `POST /_admin/config` (JSON, every field optional, 0 = off):

    error_rate       share of requests answered 500/502/503 (e.g. 0.05)
    throttle_every   every Nth request is answered 429, alternating `Retry-After: 1` and an
                     HTTP-date 2 s ahead; a request before that time counts as `early`
    mutate_every     every Nth list request first changes one item (new version, now)
    late_every       every Nth list request first adds an item dated now that becomes
    late_secs        visible only `late_secs` later
    cursor_ttl       seconds a cursor stays valid; older ones get 410 Gone
    rate_per_sec     a budget per credential: over it, 429 with `X-RateLimit-Remaining: 0`
                     and `X-RateLimit-Reset` (epoch seconds); counted as `over_budget`
    token            required `Authorization: Bearer <token>` (401 otherwise)
    shuffle          `/page` and `/offset` list in a new random order on every request (an
                     unstable order, as sorting on a non-unique key can give)
    ignore_paging    every style answers the first page whatever page, offset, cursor or
                     after_id is asked for (`updated_since` still applies)
    empty_pages      `/cursor` and `/link` answer every page empty, always with the same
                     next page

Administration (for tests):

    POST /_admin/add             {"n": 10}            adds items dated now; with
                                 "note_bytes": B each has a random `note` of B bytes
    POST /_admin/mutate          {"n": 5}             changes random items
    POST /_admin/expire_cursors                       every cursor issued so far gets 410
    GET  /_admin/stats           requests and answers by class, `early`, `over_budget`,
                                 `items_served`, and `versions`: every version each item had

    dev/api.py --port 0 [--items 1000] [--shared-timestamp] [--seed 1] [--generated N]

`--shared-timestamp` gives the initial items one `updated_at`. `--generated N` serves N
static items computed on the fly (for the benchmark; only `/cursor/items`). Prints
`listening on http://127.0.0.1:<port>` once it is ready.
"""

import argparse
import base64
import bisect
import calendar
import contextlib
import email.utils
import hashlib
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

STYLES = ("cursor", "link", "page", "offset", "keyset")
STATUSES = ("pending", "paid", "shipped", "delivered", "refunded")


def now_ms():
    return int(time.time() * 1000)


def rfc3339(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def parse_rfc3339(text):
    # 2026-01-01T00:00:00.123Z or without fraction; UTC only (what sluice sends).
    text = text.strip()
    if not text.endswith("Z"):
        raise ValueError("not UTC")
    main, _, frac = text[:-1].partition(".")
    secs = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    ms = int((frac + "000")[:3]) if frac else 0
    return secs * 1000 + ms


class Api:
    def __init__(self, items, shared_timestamp, seed, generated):
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.config = {}
        self.items = {}  # id -> dict (with private "_visible_at")
        self.versions = {}  # id -> [versions]
        self.next_id = 1
        self.requests = 0
        self.list_requests = 0
        self.answers = {}
        self.early = 0
        self.over_budget = 0
        self.items_served = 0
        self.not_before = 0.0
        self.generation = 0
        self.buckets = {}
        self.generated = generated
        self.base_ms = now_ms() - 10 * 24 * 3600 * 1000
        start = now_ms() - 60_000
        for i in range(items):
            self.add_item(start if shared_timestamp else start + i, 0)

    # --- items -------------------------------------------------------------------------

    def add_item(self, at_ms, late_secs):
        item_id = "o-%06d" % self.next_id
        self.next_id += 1
        self.items[item_id] = {
            "id": item_id,
            "updated_at_ms": at_ms,
            "version": 1,
            "status": "pending",
            "amount": self.rng.randint(1, 500),
            "_visible_at": at_ms + late_secs * 1000,
        }
        self.versions[item_id] = [1]

    def mutate(self):
        if not self.items:
            return
        item = self.items[self.rng.choice(sorted(self.items))]
        item["version"] += 1
        item["updated_at_ms"] = max(now_ms(), item["updated_at_ms"] + 1)
        item["status"] = self.rng.choice(STATUSES)
        item["_visible_at"] = 0
        self.versions[item["id"]].append(item["version"])

    def public(self, item):
        return {
            "id": item["id"],
            "updated_at": rfc3339(item["updated_at_ms"]),
            "version": item["version"],
            "status": item["status"],
            "amount": item["amount"],
            **({"note": item["note"]} if "note" in item else {}),
        }

    def listing(self, since_ms):
        t = now_ms()
        rows = [
            (i["updated_at_ms"], i["id"], i)
            for i in self.items.values()
            if i["updated_at_ms"] >= since_ms and i["_visible_at"] <= t
        ]
        rows.sort(key=lambda r: (r[0], r[1]))
        return rows

    def generated_item(self, n):
        ms = self.base_ms + n
        return {
            "id": "g-%07d" % n,
            "updated_at": rfc3339(ms),
            "version": 1,
            "status": STATUSES[n % len(STATUSES)],
            "amount": n % 500,
        }

    # --- cursors -----------------------------------------------------------------------

    def cursor(self, ts, item_id):
        raw = json.dumps({"t": ts, "i": item_id, "g": self.generation, "at": time.time()})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def read_cursor(self, token):
        """(ts, id), or "gone" when expired, or None when unreadable."""
        try:
            c = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            ts, item_id, gen, at = c["t"], c["i"], c["g"], c["at"]
        except Exception:
            return None
        ttl = self.config.get("cursor_ttl") or 0
        if gen < self.generation or (ttl and time.time() - at > ttl):
            return "gone"
        return ts, item_id


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.api.answers[str(status)] = self.api.answers.get(str(status), 0) + 1
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def json_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_POST(self):
        api = self.api
        path = urlsplit(self.path).path
        body = self.json_body()
        with api.lock:
            if path == "/_admin/config":
                api.config.update(body)
            elif path == "/_admin/add":
                for _ in range(int(body.get("n", 1))):
                    api.add_item(now_ms(), int(body.get("late_secs", 0)))
                    if body.get("note_bytes"):
                        last = api.items["o-%06d" % (api.next_id - 1)]
                        # Random, so compression does not shrink it below a record limit.
                        raw = api.rng.randbytes(int(body["note_bytes"]) * 3 // 4)
                        last["note"] = base64.b64encode(raw).decode()
            elif path == "/_admin/mutate":
                for _ in range(int(body.get("n", 1))):
                    api.mutate()
            elif path == "/_admin/expire_cursors":
                api.generation += 1
            else:
                return self.send(404)
        self.send(204)

    def do_GET(self):
        api = self.api
        url = urlsplit(self.path)
        if url.path == "/_admin/stats":
            with api.lock:
                stats = {
                    "requests": api.requests,
                    "answers": api.answers,
                    "early": api.early,
                    "over_budget": api.over_budget,
                    "items_served": api.items_served,
                    "versions": api.versions,
                }
            return self.send(200, json.dumps(stats).encode())
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in STYLES or parts[1] != "items":
            return self.send(404, b'{"error": "no such list"}')
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with api.lock:
            refusal = self.refusal()
            if refusal:
                return self.send(*refusal)
            try:
                status, body, headers = self.list(parts[0], query)
            except ValueError as e:
                return self.send(400, json.dumps({"error": str(e)}).encode())
        if status == 200:
            etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
            headers.append(("ETag", etag))
            if self.headers.get("If-None-Match") == etag:
                return self.send(304, b"", [("ETag", etag)])
        self.send(status, body, headers)

    def refusal(self):
        """The fault to answer instead of the listing, if any (called under the lock)."""
        api, cfg = self.api, self.api.config
        api.requests += 1
        t = time.time()
        if t < api.not_before:
            api.early += 1
        token = cfg.get("token")
        auth = self.headers.get("Authorization", "")
        if token and auth != "Bearer " + token:
            return 401, b'{"error": "unauthorized"}'
        rate = cfg.get("rate_per_sec") or 0
        if rate:
            tokens, last = api.buckets.get(auth, (float(rate), t))
            tokens = min(float(rate), tokens + (t - last) * rate)
            if tokens < 1:
                api.over_budget += 1
                api.buckets[auth] = (tokens, t)
                reset = int(t + (1 - tokens) / rate) + 1
                return 429, b'{"error": "over budget"}', [
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", str(reset)),
                ]
            api.buckets[auth] = (tokens - 1, t)
        every = cfg.get("throttle_every") or 0
        if every and api.requests % every == 0:
            if (api.requests // every) % 2:
                wait, value = 1.0, "1"
            else:
                at = int(t) + 2
                wait, value = at - t, email.utils.formatdate(at, usegmt=True)
            api.not_before = max(api.not_before, t + wait)
            return 429, b'{"error": "slow down"}', [("Retry-After", value)]
        rate = cfg.get("error_rate") or 0
        if rate and api.rng.random() < rate:
            return api.rng.choice((500, 502, 503)), b'{"error": "injected"}'
        return None

    def list(self, style, q):
        api, cfg = self.api, self.api.config
        api.list_requests += 1
        for key, action in (("mutate_every", api.mutate), ("late_every", None)):
            every = cfg.get(key) or 0
            if every and api.list_requests % every == 0:
                if action:
                    action()
                else:
                    api.add_item(now_ms(), int(cfg.get("late_secs") or 0))
        since = parse_rfc3339(q["updated_since"]) if "updated_since" in q else 0
        limit = max(1, min(int(q.get("limit", 100)), 1000))
        if api.generated:
            return self.list_generated(since, limit, q)
        rows = api.listing(since)
        after = None
        if style in ("cursor", "link") and "cursor" in q:
            after = api.read_cursor(q["cursor"])
            if after == "gone":
                return 410, b'{"error": "cursor expired"}', []
            if after is None:
                raise ValueError("unreadable cursor")
        if style == "keyset" and "after_id" in q:
            after = (since, q["after_id"])
        if style in ("page", "offset") and q.get("order") == "desc":
            rows = rows[::-1]
        if style in ("page", "offset") and cfg.get("shuffle"):
            rows = list(rows)
            api.rng.shuffle(rows)
        if cfg.get("ignore_paging"):
            after, start = None, 0
        elif after is not None:
            start = bisect.bisect_right([(r[0], r[1]) for r in rows], tuple(after))
        elif style == "page":
            start = (int(q.get("page", 1)) - 1) * limit
        elif style == "offset":
            start = int(q.get("offset", 0))
        else:
            start = 0
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        token = api.cursor(page[-1][0], page[-1][1]) if page and more else None
        if cfg.get("empty_pages") and style in ("cursor", "link"):
            # Empty, and the same next page every time: a cursor that loops.
            api.empty_token = getattr(api, "empty_token", None) or api.cursor(0, "o-000000")
            page, token = [], api.empty_token
        data = [api.public(r[2]) for r in page]
        api.items_served += len(data)
        body = {"data": data}
        headers = []
        if style == "cursor":
            body["next_cursor"] = token
        if style == "link" and token:
            query = dict(q, cursor=token)
            host = self.headers.get("Host", "127.0.0.1")
            headers.append(("Link", '<http://%s/link/items?%s>; rel="next"' % (host, urlencode(query))))
        return 200, json.dumps(body).encode(), headers

    def list_generated(self, since, limit, q):
        api = self.api
        first = max(0, since - api.base_ms)
        if "cursor" in q:
            after = api.read_cursor(q["cursor"])
            if after == "gone":
                return 410, b'{"error": "cursor expired"}', []
            first = max(first, after[0] - api.base_ms + 1)
        end = min(api.generated, first + limit)
        data = [api.generated_item(n) for n in range(first, end)]
        api.items_served += len(data)
        token = api.cursor(api.base_ms + end - 1, "") if end < api.generated else None
        return 200, json.dumps({"data": data, "next_cursor": token}).encode(), []


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client killed mid-request (the poller's SIGKILL tests and benchmark) is expected;
        # anything else keeps the standard traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--shared-timestamp", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generated", type=int, default=0)
    args = parser.parse_args()
    Handler.api = Api(args.items, args.shared_timestamp, args.seed, args.generated)
    with Server(("127.0.0.1", args.port), Handler) as server:
        host, port = server.server_address
        sys.stdout.write("listening on http://%s:%d\n" % (host, port))
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


if __name__ == "__main__":
    main()
