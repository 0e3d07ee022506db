"""The model download, visible: bytes done/total and speed per file, from huggingface_hub's own
download code (its progress bars are this module's meters), for the CLI and the server's
`loading` state.

    path = download(repo_id, allow_patterns=[...], cache_dir=None, on_progress=print)

`snapshot_download(dry_run=True)` lists what is missing from the cache (with sizes), then each
file goes through `hf_hub_download(..., tqdm_class=<a meter for that file>)` at the commit the
dry run resolved, and a last `snapshot_download` (everything cached by then) returns the
snapshot folder and records the branch. Listeners (`listening`) let the server forward the
progress without the loader knowing about it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

EMIT_INTERVAL_S = 0.25      # at most 4 reports a second (plus one per finished file)
SPEED_WINDOW_S = 3.0


@dataclass(frozen=True)
class DownloadProgress:
    """One report. `file_*` is the file being fetched; `done`/`total` all files to fetch."""

    repo: str
    file: str
    file_done: int
    file_total: int
    done: int
    total: int
    files_done: int
    files_total: int
    bytes_per_s: float
    finished: bool = False

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)

    def to_dict(self) -> dict:
        """The protocol's `engine.download` object (protocol/PROTOCOL.md)."""
        d = asdict(self)
        d["bytes_per_s"] = round(self.bytes_per_s)
        return d


def describe(p: dict | DownloadProgress) -> str:
    """One line for people (protocol/download.py: the same line in every front end)."""
    from protocol.download import describe as line
    return line(p.to_dict() if isinstance(p, DownloadProgress) else p)


def print_line(p: DownloadProgress) -> None:
    """The terminal's listener: one line, rewritten in place; a new line when done."""
    import sys
    sys.stderr.write("\r" + describe(p)[:150].ljust(150) + ("\n" if p.finished else ""))
    sys.stderr.flush()


# ---- listeners (the server forwards reports while it loads) ------------------------------

_listeners: list[Callable[[DownloadProgress], None]] = []
_lock = threading.Lock()


@contextlib.contextmanager
def listening(fn: Callable[[DownloadProgress], None]) -> Iterator[None]:
    with _lock:
        _listeners.append(fn)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(fn)


def publish(p: DownloadProgress) -> None:
    with _lock:
        fns = list(_listeners)
    for fn in fns:
        try:
            fn(p)
        except Exception:       # a listener's bug must not stop the download
            pass


# ---- the meters --------------------------------------------------------------------------

class Meter:
    """Totals for one download; `bar(file)` is a tqdm stand-in for huggingface_hub."""

    def __init__(self, repo: str, total: int, files_total: int,
                 on_progress: Callable[[DownloadProgress], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.repo, self.total, self.files_total = repo, total, files_total
        self.on_progress = on_progress
        self.clock = clock
        self.done = self.files_done = 0
        self.file, self.file_done, self.file_total = "", 0, 0
        self._samples: deque[tuple[float, int]] = deque()
        self._last_emit = -1e9
        self._lock = threading.Lock()

    def bar(self, file: str, size: int | None):
        meter = self

        class FileBar:
            """What huggingface_hub calls on a progress bar (http_get and xet_get)."""

            def __init__(self, *args, total=None, initial=0, **kwargs):
                meter._start_file(file, int(total or size or 0), int(initial or 0))

            def update(self, n=1):
                meter._add(int(n or 0))

            def update_transfer(self, n=1):     # network bytes; update() counts the file's
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def close(self):
                pass

            def set_postfix_str(self, *a, **k):
                pass

            set_transfer_postfix_str = set_description = set_description_str = set_postfix_str
            refresh = reset = set_postfix_str

        return FileBar

    def _start_file(self, file: str, size: int, initial: int) -> None:
        with self._lock:
            self.file, self.file_total, self.file_done = file, size, initial
            self.done += initial
        self._emit(force=True)

    def _add(self, n: int) -> None:
        with self._lock:
            self.file_done += n
            self.done += n
        self._emit()

    def file_finished(self, file: str, size: int | None) -> None:
        with self._lock:
            if size and self.file == file and self.file_done < size:
                self.done += size - self.file_done       # a file with nothing to stream
                self.file_done = size
            self.files_done += 1
        self._emit(force=True)

    def finish(self) -> DownloadProgress:
        with self._lock:
            self.done = max(self.done, self.total)
            self.files_done = self.files_total
        return self._emit(force=True, finished=True)

    def _speed(self, now: float) -> float:
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_S:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (self.done - b0) / (now - t0) if now > t0 else 0.0

    def _emit(self, force: bool = False, finished: bool = False) -> DownloadProgress | None:
        now = self.clock()
        with self._lock:
            speed = self._speed(now)
            if not force and now - self._last_emit < EMIT_INTERVAL_S:
                return None
            self._last_emit = now
            p = DownloadProgress(self.repo, self.file, self.file_done, self.file_total,
                                 self.done, self.total, self.files_done, self.files_total,
                                 speed, finished)
        if self.on_progress is not None:
            self.on_progress(p)
        publish(p)
        return p


def download(repo_id: str, *, allow_patterns: list[str] | None = None,
             cache_dir: str | Path | None = None,
             on_progress: Callable[[DownloadProgress], None] | None = None) -> Path:
    """snapshot_download with a report per file; raises what huggingface_hub raises."""
    from huggingface_hub import hf_hub_download, snapshot_download

    plan = snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir,
                             dry_run=True)
    todo = sorted((f for f in plan if f.will_download), key=lambda f: f.filename)
    meter = Meter(repo_id, sum(int(f.file_size or 0) for f in todo), len(todo), on_progress)
    for f in todo:
        hf_hub_download(repo_id, f.filename, revision=f.commit_hash, cache_dir=cache_dir,
                        tqdm_class=meter.bar(f.filename, f.file_size))
        meter.file_finished(f.filename, f.file_size)
    path = Path(snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir))
    meter.finish()
    return path
