"""A local stand-in for the Hugging Face hub's HTTP endpoints, serving one folder as one model
repo, so huggingface_hub's real download code runs against it (HF_ENDPOINT=mirror.url):

    GET  /api/models/<repo>/revision/<rev>          repo info (sha, siblings)
    GET  /api/models/<repo>/tree/<rev>[?recursive]   the file listing (sizes, blob ids)
    HEAD /<repo>/resolve/<rev>/<path>                X-Repo-Commit, ETag, Content-Length
    GET  /<repo>/resolve/<rev>/<path>                the bytes (at `bytes_per_s`, if set)

Only what huggingface_hub 1.x/2.x asks for; anything else is a 404 like the hub's.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubMirror:
    def __init__(self, root: Path, repo: str, *, bytes_per_s: float = 0.0):
        self.root, self.repo, self.bytes_per_s = Path(root), repo, bytes_per_s
        self.files = {p.relative_to(self.root).as_posix(): p
                      for p in sorted(self.root.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str]] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                mirror._serve(self, body=False)

            def do_GET(self):
                mirror._serve(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubMirror":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())

    # ---- endpoints ---------------------------------------------------------------------
    def _serve(self, h, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        api = f"/api/models/{self.repo}/"
        if path.startswith(api + "revision/"):
            return self._json(h, {"_id": "x", "id": self.repo, "modelId": self.repo,
                                  "sha": COMMIT, "private": False, "tags": [],
                                  "siblings": [{"rfilename": f} for f in self.files]}, body)
        if path.startswith(api + "tree/"):
            return self._json(h, self._tree(), body)
        prefix = f"/{self.repo}/resolve/"
        if path.startswith(prefix):
            _rev, _, name = path[len(prefix):].partition("/")
            if name in self.files:
                return self._file(h, self.files[name], body)
        h.send_response(404)
        h.send_header("X-Error-Code", "EntryNotFound")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _tree(self) -> list[dict]:
        dirs = sorted({str(Path(f).parent.as_posix()) for f in self.files} - {"."})
        out = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d}
               for d in dirs]
        out += [{"type": "file", "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                 "size": p.stat().st_size, "path": f} for f, p in self.files.items()]
        return out

    def _json(self, h, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _file(self, h, p: Path, body: bool) -> None:
        data = p.read_bytes()
        h.send_response(200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if not body:
            return
        step = 64 * 1024
        for i in range(0, len(data), step):
            h.wfile.write(data[i:i + step])
            if self.bytes_per_s:
                time.sleep(step / self.bytes_per_s)
