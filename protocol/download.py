"""The model download while the engine loads: the optional `engine.download` object of `welcome`
(PROTOCOL.md, "Model download"). `parse` bounds what came off the wire (None when it is not a
usable report); `describe` is the one line people see (CLI, Blender, the engine's own CLI)."""

from __future__ import annotations

MAX_TEXT = 300                  # repo ids and file names longer than this are cut
MAX_BYTES = 1 << 50             # 1 PiB: any count above is not a real download
INT_FIELDS = ("file_done", "file_total", "done", "total", "files_done", "files_total",
              "bytes_per_s")


def parse(engine: dict | None) -> dict | None:
    """welcome["engine"] -> its bounded `download` report, or None."""
    d = engine.get("download") if isinstance(engine, dict) else None
    if not isinstance(d, dict):
        return None
    out: dict = {}
    for key in INT_FIELDS:
        v = d.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_BYTES:
            return None
        out[key] = int(v)
    for key in ("repo", "file"):
        v = d.get(key, "")
        out[key] = v[:MAX_TEXT] if isinstance(v, str) else ""
    out["finished"] = d.get("finished") is True
    return out


def fraction(d: dict) -> float:
    total, done = d.get("total") or 0, d.get("done") or 0
    return 1.0 if total <= 0 else max(0.0, min(1.0, done / total))


def size_text(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def describe(d: dict) -> str:
    """'Downloading model: 41 % (13.5 GB of 32.9 GB), 48.2 MB/s, file 5 of 21: transformer/
    diffusion_pytorch_model-00002-of-00003.safetensors (1.2 GB of 9.9 GB)'."""
    text = (f"Downloading model: {fraction(d) * 100:.0f} % ({size_text(d.get('done') or 0)} "
            f"of {size_text(d.get('total') or 0)})")
    if d.get("bytes_per_s"):
        text += f", {size_text(d['bytes_per_s'])}/s"
    files = d.get("files_total") or 0
    if files:
        text += f", file {min((d.get('files_done') or 0) + 1, files)} of {files}"
        if d.get("file") and not d.get("finished"):
            text += f": {d['file']}"
            if (d.get("file_total") or 0) > 1_000_000:
                text += (f" ({size_text(d.get('file_done') or 0)} of "
                         f"{size_text(d['file_total'])})")
    return text
