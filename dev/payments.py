#!/usr/bin/env python3
"""A local stand-in for a payment provider, for sluice's HTTP saga steps (demo and tests).

It listens on 127.0.0.1 only and behaves like the real providers where it matters to a
saga: every POST needs an `Idempotency-Key`; the first request with a key performs the
side effect and stores its answer, and every later request with that key gets the same
answer (status and body, plus `Idempotent-Replayed: true`) without a second effect. A key
reused with a different body is refused with 409, as Stripe does.

    POST /v1/charges   {"order_id": "...", "amount": "19.99", "currency": "EUR"}
                       -> 201 {"id": "ch_1", "status": "succeeded", "order_id": ..., ...}
    POST /v1/refunds   {"charge": "ch_1"}
                       -> 201 {"id": "re_1", "status": "succeeded", "charge": "ch_1"}
                          (404 for an unknown charge)
    GET  /_counts      what happened, for tests:
                       {"effects": {"<path> <key>": n}, "requests": {"<path> <key>": n},
                        "charges": {"ch_1": {...}}, "refunds": {...}, "log": [...]}
    POST /_faults      {"path": "/v1/charges", "order_suffix": "-declined", "status": 422,
                        "times": 2, "retry_after": 1, "delay_ms": 0}
                       adds a fault rule (all fields but `path` optional), see below
    DELETE /_faults    removes every rule

A fault rule matches requests to `path` (and, with `order_suffix`, whose body's
`order_id` ends so). While it has `times` left (forever without), it answers `status`
(with `Retry-After` when given) *instead* of the request, before any effect, and nothing
is stored under the key, like a provider failing in front of its idempotency layer. A
rule with `delay_ms` and no `status` performs the request, stores the answer, then waits
that long before sending it: a caller killed during the wait finds the stored answer when
it comes back with the same key.

    dev/payments.py --port 0 [--demo]

prints `listening on http://127.0.0.1:<port>` once it is ready. `--demo` starts it with the
demo's faults (`make demo`, DEMO_FAULTS): the order ending `-fails-payment` is declined
with 402 (a permanent failure: the saga compensates), and the first charge of the order
ending `-ok-3` is answered 429 with `Retry-After: 1` (the call waits and tries again).
"""

import argparse
import collections
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024

# The fault rules `--demo` starts with (see the module docs).
DEMO_FAULTS = [
    {"path": "/v1/charges", "order_suffix": "-fails-payment", "status": 402},
    {"path": "/v1/charges", "order_suffix": "-ok-3", "status": 429, "times": 1, "retry_after": 1},
]


class Provider:
    """The provider's state; one lock, since requests are served on threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stored = {}  # (path, key) -> (body bytes, status, answer dict)
        self.effects = collections.Counter()
        self.requests = collections.Counter()
        self.charges = {}
        self.refunds = {}
        self.faults = []
        self.log = []

    def fault_for(self, path, body):
        """The first matching rule with `times` left (spending one), or None."""
        order = str(body.get("order_id", "")) if isinstance(body, dict) else ""
        for rule in self.faults:
            if rule.get("path") != path:
                continue
            suffix = rule.get("order_suffix")
            if suffix and not order.endswith(suffix):
                continue
            times = rule.get("times")
            if times is not None:
                if times <= 0:
                    continue
                rule["times"] = times - 1
            return dict(rule)
        return None

    def perform(self, path, body):
        """The side effect of a first request: (status, answer)."""
        if path == "/v1/charges":
            charge_id = "ch_%d" % (len(self.charges) + 1)
            charge = {
                "id": charge_id,
                "object": "charge",
                "status": "succeeded",
                "order_id": body.get("order_id"),
                "amount": body.get("amount"),
                "currency": body.get("currency"),
            }
            self.charges[charge_id] = charge
            return 201, charge
        if path == "/v1/refunds":
            charge = body.get("charge")
            if charge not in self.charges:
                return 404, {"error": {"type": "invalid_request_error", "message": "no such charge"}}
            refund_id = "re_%d" % (len(self.refunds) + 1)
            refund = {"id": refund_id, "object": "refund", "status": "succeeded", "charge": charge}
            self.refunds[refund_id] = refund
            return 201, refund
        return 404, {"error": {"type": "invalid_request_error", "message": "unknown path"}}


class Handler(BaseHTTPRequestHandler):
    provider = None  # set in main
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None, b""
        raw = self.rfile.read(length) if length else b""
        try:
            return (json.loads(raw) if raw else {}), raw
        except ValueError:
            return None, raw

    def do_GET(self):
        p = self.provider
        if self.path == "/_counts":
            with p.lock:
                self.answer(200, {
                    "effects": {"%s %s" % k: n for k, n in p.effects.items()},
                    "requests": {"%s %s" % k: n for k, n in p.requests.items()},
                    "charges": p.charges,
                    "refunds": p.refunds,
                    "log": p.log,
                })
            return
        self.answer(404, {"error": {"message": "unknown path"}})

    def do_DELETE(self):
        if self.path == "/_faults":
            with self.provider.lock:
                self.provider.faults.clear()
            self.answer(200, {"faults": []})
            return
        self.answer(404, {"error": {"message": "unknown path"}})

    def do_POST(self):
        p = self.provider
        body, raw = self.read_body()
        if self.path == "/_faults":
            if not isinstance(body, dict) or not isinstance(body.get("path"), str):
                self.answer(400, {"error": {"message": "a rule needs a `path`"}})
                return
            with p.lock:
                p.faults.append(body)
            self.answer(201, body)
            return
        if body is None or not isinstance(body, dict):
            self.answer(400, {"error": {"type": "invalid_request_error", "message": "the body must be a JSON object"}})
            return
        key = self.headers.get("Idempotency-Key")
        if not key:
            self.answer(400, {"error": {"type": "invalid_request_error", "message": "Idempotency-Key is required"}})
            return
        delay = 0
        with p.lock:
            p.requests[(self.path, key)] += 1
            entry = {"time": time.time(), "path": self.path, "key": key,
                     "order_id": body.get("order_id"),
                     "authorization": bool(self.headers.get("Authorization"))}
            p.log.append(entry)
            fault = p.fault_for(self.path, body)
            if fault and fault.get("status"):
                entry["status"] = fault["status"]
                entry["fault"] = True
                headers = []
                if fault.get("retry_after") is not None:
                    headers.append(("Retry-After", str(fault["retry_after"])))
                status = int(fault["status"])
                answer = {"error": {"type": "injected", "message": "fault injected: %d" % status}}
            else:
                stored = p.stored.get((self.path, key))
                if stored is not None:
                    raw_first, status, answer = stored
                    if raw_first != raw:
                        status, answer = 409, {"error": {"type": "idempotency_error",
                                                         "message": "Idempotency-Key reused with a different body"}}
                        headers = []
                    else:
                        headers = [("Idempotent-Replayed", "true")]
                else:
                    status, answer = p.perform(self.path, body)
                    if status < 300:
                        p.effects[(self.path, key)] += 1
                    p.stored[(self.path, key)] = (raw, status, answer)
                    headers = []
                entry["status"] = status
                if fault:
                    delay = fault.get("delay_ms") or 0
        if delay:
            time.sleep(delay / 1000.0)
        self.answer(status, answer, headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--demo", action="store_true", help="start with the demo's fault rules")
    args = parser.parse_args()
    Handler.provider = Provider()
    if args.demo:
        Handler.provider.faults.extend(dict(rule) for rule in DEMO_FAULTS)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening on http://127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
