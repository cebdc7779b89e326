#!/usr/bin/env python3
"""A fault-injecting webhook receiver for sluice's outbound tests and demo.

It listens on 127.0.0.1 only, verifies Standard Webhooks signatures with the official
`standardwebhooks` package (not sluice's own code), answers according to the path, and
appends one JSON line per request to a log file:

    /ok                 200
    /status/<code>      that status (100..599)
    /retry-after/<s>    429 with `Retry-After: <s>`
    /gone               410
    /hang               never answers (until --max-hang, or the client gives up)
    /slow/<ms>          waits <ms> (at most --max-hang), then 200
    /close              closes the connection without answering
    /flaky/<n>          503 for the first <n> requests of each webhook-id, then 200
    /flaky-if/<n>/<t>   like /flaky/<n> for requests whose body contains the text <t>
                        (URL-decoded); 200 for the others: one event key failing

Other paths get 404. Every method is accepted. A log line:

    {"time": "...", "method": "POST", "path": "/ok", "webhook_id": "msg_1",
     "signature_valid": true, "verified_by": [0], "signatures": 1, "status": 200,
     "body_bytes": 17, "error": null}

`signature_valid` is null when no secret was given, false when a signature header is
missing or verifies with none of the secrets. `--secret` may be given more than once (a
rotation: the old and the new secret); `verified_by` lists the indices of those that
verify the request on their own, and `signatures` counts the `v1,` signatures it carried.
With --require-signature unverified requests get 401 instead of their path's behaviour.

    dev/receiver.py --port 0 --secret whsec_... --log /tmp/receiver.jsonl

prints `listening on http://127.0.0.1:<port>` once it is ready.
"""

import argparse
import collections
import json
import os
import re
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ROUTES = [
    ("ok", re.compile(r"^/ok/?$")),
    ("status", re.compile(r"^/status/(\d{3})/?$")),
    ("retry_after", re.compile(r"^/retry-after/(\d{1,10})/?$")),
    ("gone", re.compile(r"^/gone/?$")),
    ("hang", re.compile(r"^/hang/?$")),
    ("slow", re.compile(r"^/slow/(\d{1,9})/?$")),
    ("close", re.compile(r"^/close/?$")),
    ("flaky", re.compile(r"^/flaky/(\d{1,6})/?$")),
    ("flaky_if", re.compile(r"^/flaky-if/(\d{1,6})/([^/]{1,200})/?$")),
]


def route(path):
    """The behaviour and its argument for a request path (without its query)."""
    for name, pattern in ROUTES:
        match = pattern.match(path)
        if match:
            groups = match.groups()
            if len(groups) > 1:
                return name, (int(groups[0]), unquote(groups[1]))
            return name, (int(groups[0]) if groups else None)
    return None, None


class FlakyCounts:
    """Requests seen per (path, webhook-id), bounded: the oldest ids are forgotten first."""

    def __init__(self, limit):
        self.limit = limit
        self.counts = collections.OrderedDict()
        self.lock = threading.Lock()

    def seen(self, key):
        """Counts one more request for `key`; returns how many came before it."""
        with self.lock:
            before = self.counts.pop(key, 0)
            self.counts[key] = before + 1
            while len(self.counts) > self.limit:
                self.counts.popitem(last=False)
            return before


class JsonLog:
    """Appends one JSON object per line, flushed, from any thread."""

    def __init__(self, path):
        self.file = sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, options):
        self.options = options
        self.webhooks = [Webhook(secret) for secret in options.secret]
        self.log = JsonLog(options.log)
        self.flaky = FlakyCounts(options.max_tracked_ids)
        self.slots = threading.BoundedSemaphore(options.max_concurrent)
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"
    # Socket timeout for reading a request: a client that stalls mid-request is dropped.
    timeout = 10

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass  # the JSON log says everything

    def do_POST(self):
        self.handle_webhook()

    do_PUT = do_POST
    do_GET = do_POST
    do_DELETE = do_POST
    do_PATCH = do_POST

    def handle_webhook(self):
        started = time.monotonic()
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "method": self.command,
            "path": self.path.split("?", 1)[0],
            "webhook_id": self.headers.get("webhook-id"),
            "signature_valid": None,
            "verified_by": [],
            "signatures": len(self.headers.get("webhook-signature", "").split()),
            "status": None,
            "body_bytes": 0,
            "error": None,
        }
        if not self.server.slots.acquire(blocking=False):
            record["error"] = "too many concurrent requests"
            self.answer(503, record, started)
            return
        try:
            self.respond(record, started)
        finally:
            self.server.slots.release()

    def respond(self, record, started):
        body, problem = self.read_body()
        if problem:
            status, record["error"] = problem
            self.answer(status, record, started)
            return
        record["body_bytes"] = len(body)
        record["signature_valid"] = self.verify(body, record)
        if record["signature_valid"] is False and self.server.options.require_signature:
            self.answer(401, record, started)
            return
        behaviour, arg = route(record["path"])
        if behaviour is None:
            self.answer(404, record, started)
        elif behaviour == "ok":
            self.answer(200, record, started)
        elif behaviour == "status":
            self.answer(arg if 100 <= arg <= 599 else 400, record, started)
        elif behaviour == "retry_after":
            self.answer(429, record, started, {"Retry-After": str(arg)})
        elif behaviour == "gone":
            self.answer(410, record, started)
        elif behaviour == "hang":
            self.hang(self.server.options.max_hang, record, started, then=None)
        elif behaviour == "slow":
            self.hang(min(arg / 1000, self.server.options.max_hang), record, started, then=200)
        elif behaviour == "close":
            self.hang_up(record, started)
        elif behaviour == "flaky":
            key = (record["path"], record["webhook_id"])
            failed_before = self.server.flaky.seen(key)
            self.answer(503 if failed_before < arg else 200, record, started)
        elif behaviour == "flaky_if":
            times, text = arg
            failing = text.encode() in body
            failed_before = self.server.flaky.seen((record["path"], record["webhook_id"]))
            self.answer(503 if failing and failed_before < times else 200, record, started)

    def read_body(self):
        """The request body, or (status, reason) when it is refused."""
        if self.headers.get("transfer-encoding"):
            return b"", (411, "chunked bodies are not accepted; send Content-Length")
        length_text = self.headers.get("content-length", "0")
        if not length_text.isdigit():
            return b"", (400, "bad Content-Length")
        length = int(length_text)
        if length > self.server.options.max_body:
            self.close_connection = True
            return b"", (413, f"body of {length} bytes is over {self.server.options.max_body}")
        try:
            return self.rfile.read(length), None
        except (socket.timeout, ConnectionError):
            self.close_connection = True
            return b"", (408, "the body did not arrive in time")

    def verify(self, body, record):
        """Whether any secret verifies the request; notes which ones do."""
        if not self.server.webhooks:
            return None
        headers = {k.lower(): v for k, v in self.headers.items()}
        for index, webhook in enumerate(self.server.webhooks):
            try:
                webhook.verify(body, headers, json_parse=False)
                record["verified_by"].append(index)
            except WebhookVerificationError as err:
                record["error"] = f"signature: {err}"
        if record["verified_by"]:
            record["error"] = None
            return True
        return False

    def hang(self, seconds, record, started, then):
        """Waits `seconds` (watching for the client leaving), then answers `then` or closes."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.server.stopping.is_set():
            if self.client_gone():
                record["error"] = "client went away"
                self.close_connection = True
                self.finish_record(record, started)
                return
            time.sleep(0.05)
        if then is None:
            self.hang_up(record, started)
        else:
            self.answer(then, record, started)

    def client_gone(self):
        try:
            self.connection.setblocking(False)
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            finally:
                self.connection.settimeout(self.timeout)
        except BlockingIOError:
            return False
        except OSError:
            return True

    def hang_up(self, record, started):
        """Closes the connection without a response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        record["error"] = record["error"] or "closed without answering"
        self.finish_record(record, started)

    def answer(self, status, record, started, headers=None):
        body = json.dumps({"status": status}).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            record["status"] = status
        except OSError as err:
            record["error"] = f"answering: {err}"
            self.close_connection = True
        self.finish_record(record, started)

    def finish_record(self, record, started):
        record["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        self.server.log.write(record)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        help="Standard Webhooks secret (whsec_...), repeatable; default $SLUICE_RECEIVER_SECRET",
    )
    parser.add_argument("--log", default="-", help="JSON-lines log file ('-': stdout)")
    parser.add_argument("--require-signature", action="store_true", help="401 when unsigned")
    parser.add_argument("--max-body", type=int, default=1024 * 1024, help="bytes (413 above)")
    parser.add_argument("--max-hang", type=float, default=60.0, help="seconds /hang waits")
    parser.add_argument("--max-concurrent", type=int, default=256, help="requests (503 above)")
    parser.add_argument("--max-tracked-ids", type=int, default=100_000, help="for /flaky")
    return parser.parse_args(argv)


def main(argv=None):
    options = parse_args(argv)
    if not options.secret and os.environ.get("SLUICE_RECEIVER_SECRET"):
        options.secret = [os.environ["SLUICE_RECEIVER_SECRET"]]
    server = Receiver(options.port, options)
    port = server.server_address[1]
    # The readiness line goes to stderr when the log takes stdout.
    ready = sys.stderr if options.log == "-" else sys.stdout
    print(f"listening on http://127.0.0.1:{port}", file=ready, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


if __name__ == "__main__":
    main()
