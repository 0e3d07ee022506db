"""The model download, visible: huggingface_hub's real download code against a local mirror of
the hub's endpoints (tests/engine/hub_mirror.py, serving the tiny model as a repo), reports per
file ending at 100 %, in the engine's CLI and through the server to `python -m protocol
generate`; offline still gives the one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import download_progress as dp
from engine.download_progress import DownloadProgress, Meter
from engine.errors import EngineError
from engine.sources import resolve_hub
from protocol import download as wire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hub_mirror import HubMirror  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REPO = "test/zimage-tiny"


@pytest.fixture
def hub(monkeypatch, tiny_engine_model_dir):
    """The mirror, and huggingface_hub pointed at it (its endpoint constants are read at
    import time, so they are patched as well as the environment)."""
    from huggingface_hub import constants
    with HubMirror(tiny_engine_model_dir, REPO, bytes_per_s=8e6) as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setattr(constants, "ENDPOINT", mirror.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            mirror.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(var, raising=False)
        yield mirror


def _sizes(mirror) -> dict[str, int]:
    return {name: p.stat().st_size for name, p in mirror.files.items()}


def test_download_reports_every_file_and_ends_at_100_percent(hub, tmp_path):
    reports: list[DownloadProgress] = []
    published: list[DownloadProgress] = []
    with dp.listening(published.append):
        path = dp.download(REPO, cache_dir=tmp_path / "cache", on_progress=reports.append)
    assert published == reports
    sizes = _sizes(hub)
    last = reports[-1]
    assert last.finished and last.fraction == 1.0
    assert last.done == last.total == hub.total_bytes == sum(sizes.values())
    assert last.files_done == last.files_total == len(sizes)
    assert last.bytes_per_s > 0
    done = [r.done for r in reports]
    assert done == sorted(done) and 0 < len({r.fraction for r in reports}) > 5
    # every file was reported with its own size, and its bytes ended complete
    per_file = {}
    for r in reports:
        per_file[r.file] = max(per_file.get(r.file, (0, 0)), (r.file_done, r.file_total))
    assert per_file == {name: (size, size) for name, size in sizes.items()}
    # the files really came over HTTP from the mirror, and the snapshot holds them
    gets = {p for method, p in hub.requests if method == "GET" and "/resolve/" in p}
    assert len(gets) == len(sizes)
    for name, src in hub.files.items():
        assert (path / name).read_bytes() == src.read_bytes()
    # the engine's line for people
    assert dp.describe(last).startswith("Downloading model: 100 % (")


def test_resolve_hub_downloads_with_progress_then_serves_from_the_cache(hub, tmp_path):
    seen: list[DownloadProgress] = []
    with dp.listening(seen.append):
        src = resolve_hub(REPO, cache_dir=tmp_path / "cache")
        assert src.kind == "hub" and src.name == REPO and src.transformer_files
        assert seen and seen[-1].finished and seen[-1].done == hub.total_bytes
        n = len(seen)
        resolve_hub(REPO, cache_dir=tmp_path / "cache")       # cached: nothing to report
        assert len(seen) == n


def test_offline_gives_the_one_line_error_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = []
    with dp.listening(seen.append), pytest.raises(EngineError) as info:
        resolve_hub(REPO, cache_dir=tmp_path)
    assert info.value.code == "model_unavailable" and "\n" not in info.value.message
    assert "--model PATH" in info.value.message and seen == []


def test_meter_throttles_and_measures_speed():
    now = [0.0]
    got = []
    m = Meter("r", total=10_000_000, files_total=2, on_progress=got.append,
              clock=lambda: now[0])
    bar = m.bar("a.bin", 6_000_000)(total=6_000_000, initial=0, desc="a.bin", unit="B")
    assert len(got) == 1                       # a file's start is always reported
    for _ in range(60):                        # 60 x 100 kB every 0.05 s = 2 MB/s
        now[0] += 0.05
        bar.update(100_000)
    assert 10 <= len(got) <= 14                # ~4 a second, not 60
    assert got[-1].bytes_per_s == pytest.approx(2_000_000, rel=0.05)
    m.file_finished("a.bin", 6_000_000)
    assert got[-1].done == 6_000_000 and got[-1].files_done == 1
    m.finish()
    assert got[-1].finished and got[-1].done == got[-1].total


def _env(mirror_url: str, tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_ENDPOINT=mirror_url, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0",
               TRANSFORMERS_OFFLINE="0", PYTHONUNBUFFERED="1")
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    return env


@pytest.mark.slow
def test_engine_cli_shows_the_download(tiny_engine_model_dir, tmp_path):
    with HubMirror(tiny_engine_model_dir, REPO, bytes_per_s=4e6) as mirror:
        out = tmp_path / "x.png"
        res = subprocess.run([sys.executable, "-m", "engine", "generate", "--model", REPO,
                              "--prompt", "x", "--width", "64", "--height", "64", "--steps",
                              "1", "--seed", "1", "--output", str(out)], cwd=ROOT,
                             env=_env(mirror.url, tmp_path), capture_output=True, text=True,
                             timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln.strip() for ln in res.stderr.replace("\r", "\n").splitlines()
             if ln.startswith("Downloading model")]
    assert len(lines) > 3 and lines[-1].startswith("Downloading model: 100 %"), lines[-3:]
    assert "file 1 of 18" in lines[0] and out.is_file()


@pytest.mark.slow
def test_protocol_cli_shows_the_engines_download(tiny_engine_model_dir, tmp_path):
    """`engine serve` downloads on its first start; `python -m protocol generate`, connected
    while it loads, prints the reports from the unsolicited welcomes, then gets its image."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with HubMirror(tiny_engine_model_dir, REPO, bytes_per_s=0.6e6) as mirror:
        env = _env(mirror.url, tmp_path)
        engine = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--model", REPO,
                                   "--bind", address], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            res = subprocess.run([sys.executable, "-m", "protocol", "generate", "--engine",
                                  address, "--prompt", "x", "--width", "64", "--height", "64",
                                  "--steps", "1", "--seed", "3", "--output",
                                  str(tmp_path / "y.png"), "--timeout", "240"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=300)
        finally:
            engine.terminate()
            log = engine.communicate(timeout=30)[0].decode(errors="replace")
    assert res.returncode == 0, res.stderr[-3000:] + log[-2000:]
    # text mode turned the bar's carriage returns into line ends
    reports = [seg for seg in res.stderr.splitlines() if "Downloading model" in seg]
    assert len(reports) > 3, res.stderr[-2000:]
    assert "Downloading model: 100 %" in reports[-1] and "100.0%" in reports[-1]
    assert any("MB/s" in r or "kB/s" in r for r in reports)
    assert (tmp_path / "y.png").is_file() and time.monotonic() - t0 < 300
    assert "Downloading model: 100 %" in log       # `engine serve`'s own terminal line


def test_wire_parse_bounds_hostile_reports():
    good = DownloadProgress("r", "f", 1, 2, 3, 4, 0, 1, 5.0).to_dict()
    assert wire.parse({"download": good})["done"] == 3
    assert wire.parse({}) is None and wire.parse(None) is None
    assert wire.parse({"download": "x"}) is None
    for key, bad in (("done", -1), ("total", 2 ** 60), ("files_total", "3"), ("done", True),
                     ("bytes_per_s", float("nan"))):
        assert wire.parse({"download": dict(good, **{key: bad})}) is None, key
    long = wire.parse({"download": dict(good, file="x" * 5000, repo=7)})
    assert len(long["file"]) == wire.MAX_TEXT and long["repo"] == ""
    assert wire.fraction({"done": 5, "total": 0}) == 1.0
    assert wire.describe(dict(good, done=50, total=100, bytes_per_s=2_500_000)).startswith(
        "Downloading model: 50 % (50 B of 100 B), 2.5 MB/s, file 1 of 1: f")
