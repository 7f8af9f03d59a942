#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub's HTTP API on 127.0.0.1, serving model
folders, for the tests of the download path (tests/cli.rs, python/tests).

    python3 tests/fake_hub.py --repo ORG/NAME=FOLDER [--repo ...] [--log FILE]
        [--fail-once FILE] [--slow FILE] [--token TOKEN]

Prints the port on the first line of stdout, then serves until stdin closes
(the test that started it ends) or it is killed. What the hub clients read:

- ``GET /api/models/ORG/NAME[/revision/REV]``: the repo's info, with
  ``sha`` and ``siblings`` (every file of FOLDER, recursively);
- ``GET|HEAD /ORG/NAME/resolve/REV/PATH``: the file, with the hub's
  ``X-Repo-Commit``, ``ETag`` (the file's sha256, as for LFS files),
  ``Content-Length`` and, for a ``Range`` request, ``206`` and
  ``Content-Range``;
- an unknown repo or file: ``404`` with ``X-Error-Code`` as the hub sends.

``--fail-once FILE`` sends only half of FILE the first time it is requested
from its start (the connection then closes, as a dropped download);
``--slow FILE`` sends FILE in small pieces with pauses; ``--token`` makes
every request without ``Authorization: Bearer TOKEN`` a ``401``. ``--log``
appends one JSON line per request (method, path, range, authorization).
"""

import argparse
import hashlib
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=FOLDER")
    parser.add_argument("--log")
    parser.add_argument("--fail-once", action="append", default=[])
    parser.add_argument("--slow", action="append", default=[])
    parser.add_argument("--token")
    return parser.parse_args()


class Hub:
    def __init__(self, args):
        self.repos = {}
        for spec in args.repo:
            repo_id, folder = spec.split("=", 1)
            self.repos[repo_id] = Path(folder).resolve()
        self.log = args.log
        self.fail_once = set(args.fail_once)
        self.slow = set(args.slow)
        self.token = args.token
        self.lock = threading.Lock()

    def files(self, repo_id):
        root = self.repos[repo_id]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def record(self, entry):
        if self.log:
            with self.lock, open(self.log, "a") as f:
                f.write(json.dumps(entry) + "\n")


def handler(hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.serve(body=False)

        def do_GET(self):
            self.serve(body=True)

        def reply(self, status, headers=(), payload=b"", body=True):
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def not_found(self, code, body):
            message = json.dumps({"error": code}).encode()
            self.reply(404, [("X-Error-Code", code), ("Content-Type", "application/json")], message, body)

        def serve(self, body):
            hub.record({
                "method": self.command,
                "path": self.path,
                "range": self.headers.get("Range"),
                "authorization": self.headers.get("Authorization"),
            })
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self.reply(401, [("X-Error-Code", "GatedRepo")], b'{"error":"unauthorized"}', body)
            path = self.path.split("?")[0]
            if path.startswith("/api/models/"):
                return self.info(path[len("/api/models/"):], body)
            parts = path.lstrip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                return self.file("/".join(parts[:2]), "/".join(parts[4:]), body)
            self.not_found("EntryNotFound", body)

        def info(self, rest, body):
            repo_id = "/".join(rest.split("/")[:2])
            if repo_id not in hub.repos:
                return self.not_found("RepoNotFound", body)
            info = {
                "id": repo_id,
                "modelId": repo_id,
                "sha": COMMIT,
                "siblings": [{"rfilename": f} for f in hub.files(repo_id)],
            }
            self.reply(200, [("Content-Type", "application/json")], json.dumps(info).encode(), body)

        def file(self, repo_id, name, body):
            if repo_id not in hub.repos:
                return self.not_found("RepoNotFound", body)
            if name not in hub.files(repo_id):
                return self.not_found("EntryNotFound", body)
            data = (hub.repos[repo_id] / name).read_bytes()
            start, end, status = 0, len(data) - 1, 200
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes="):
                first, _, last = requested[len("bytes="):].partition("-")
                start = int(first or 0)
                end = min(int(last), len(data) - 1) if last else len(data) - 1
                status = 206
            chunk = data[start:end + 1]
            headers = [
                ("X-Repo-Commit", COMMIT),
                ("ETag", '"%s"' % hashlib.sha256(data).hexdigest()),
                ("Accept-Ranges", "bytes"),
                ("Content-Type", "application/octet-stream"),
            ]
            if status == 206:
                headers.append(("Content-Range", f"bytes {start}-{end}/{len(data)}"))
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if not body:
                return
            whole = start == 0 and end == len(data) - 1 and len(data) > 1
            if whole and name in hub.fail_once:
                hub.fail_once.discard(name)
                self.wfile.write(chunk[: len(chunk) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if name in hub.slow:
                step = max(1, len(chunk) // 20)
                for i in range(0, len(chunk), step):
                    self.wfile.write(chunk[i:i + step])
                    self.wfile.flush()
                    time.sleep(0.05)
                return
            self.wfile.write(chunk)

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients close kept-alive connections when they are done.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def main():
    args = parse_args()
    server = Server(("127.0.0.1", 0), handler(Hub(args)))
    print(server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Stop when the test that started this closes stdin (or dies).
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
