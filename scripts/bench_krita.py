#!/usr/bin/env python3
"""The Krita plugin's cost on Krita's UI thread, in real headless Krita (kritarunner, Xvfb).

    .venv/bin/python scripts/bench_krita.py [--runs 7] [--sides 1000,1024,2048]

Builds the plugin zip, installs it with Krita's own importer into a throw-away resources
folder, and times, per canvas side (median and max of --runs, ms), the plugin's own UI-thread
work around a job, without an engine (the socket work is on the client's thread anyway):

* capture: Panel.generate's read of the canvas (visible projection -> RGB) and of a
  selection mask, plus the padding to the engine's multiple of 16 (requests.build);
* result -> layer pixels: core.pixels.layer_pixels (crop to the canvas, RGB -> BGRA, the
  selection as alpha), which the docker runs on its worker thread;
* new layer: what the QTimer pump then runs on the UI thread (new paint layer,
  setPixelData, refreshProjection), plain and with a mask; `wait` is Krita finishing the
  projection after it (Krita's own work on its threads, listed for scale);
* pump ticks during whole jobs: a stand-in engine (`engine serve --standin --step-seconds
  0.05`), `--jobs` 1024² 8-step jobs with a preview every step, every QTimer tick of the
  docker timed (event loop spun by the script, the timer firing for real).

Prints markdown tables (docs/benchmarks.md, "Krita plugin").
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTER = Path("/usr/share/krita/pykrita/plugin_importer/plugin_importer.py")


class Image:
    """An engine result as the client hands it over (raw RGB)."""

    def __init__(self, width, height, rgb):
        self.width, self.height, self.rgb, self.seed = width, height, rgb, 0

    def to_rgb_bytes(self):
        return self.rgb


def krita_main(*_args):
    """Runs inside Krita."""
    from krita import Krita, Selection
    from PyQt5.QtCore import QByteArray
    from zimage_krita.core import pixels, requests
    from zimage_krita.glue import canvas

    cfg = json.loads(os.environ["ZIMAGE_BENCH"])
    rows = []
    limits = requests.EngineLimits()
    for side in cfg["sides"]:
        doc = Krita.instance().createDocument(side, side, "bench", "RGBA", "U8", "", 72.0)
        noise = os.urandom(side * side * 3)
        doc.topLevelNodes()[0].setPixelData(QByteArray(pixels.rgb_to_bgra(noise, side, side)),
                                            0, 0, side, side)
        sel = Selection()
        sel.select(side // 4, side // 4, side // 2, side // 2, 255)
        doc.setSelection(sel)
        doc.refreshProjection()
        doc.waitForDone()
        w, h = requests.canvas_size_for_engine((side, side), limits)
        result = os.urandom(w * h * 3)
        image = Image(w, h, result)
        times = {"capture": [], "convert": [], "convert_mask": [], "apply": [],
                 "apply_mask": [], "wait": []}
        for _ in range(cfg["runs"]):
            t0 = time.perf_counter()
            cap = canvas.capture(doc, requests.CANVAS, True)
            requests.build(requests.KritaSettings("x", mode=requests.INPAINT), limits, None,
                           (side, side), cap)
            times["capture"].append(time.perf_counter() - t0)
            for key, mask in (("", None), ("_mask", cap.mask)):
                t0 = time.perf_counter()
                lw, lh, bgra = pixels.layer_pixels(image, (side, side), True, mask)
                times["convert" + key].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                node = canvas.add_result_layer(doc, "bench", lw, lh, bgra)
                times["apply" + key].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                doc.waitForDone()
                times["wait"].append(time.perf_counter() - t0)
                node.remove()
        rows.append({"side": side, "engine_size": [w, h],
                     **{k: [round(v * 1000, 1) for v in vs] for k, vs in times.items()}})
        doc.close()
    ticks = jobs_ticks(cfg) if cfg.get("engine") else []
    with open(cfg["out"], "w") as fh:
        json.dump({"rows": rows, "jobs": ticks}, fh)


def jobs_ticks(cfg) -> list[dict]:
    from krita import Krita
    from PyQt5.QtWidgets import QApplication
    from zimage_krita.glue.docker import Panel

    class Store(dict):
        def read(self, key, default=""):
            return self.get(key, default)

        def write(self, key, value):
            self[key] = value

    app = QApplication.instance()
    doc = Krita.instance().createDocument(1024, 1024, "bench", "RGBA", "U8", "", 72.0)
    panel = Panel(document=lambda: doc, store=Store())
    ticks: list[tuple[float, str]] = []

    def timed():
        t0 = time.perf_counter()
        phase = panel.session.job.phase if panel.session.job else None
        panel.pump()
        after = panel.session.job.phase if panel.session.job else None
        ticks.append((time.perf_counter() - t0, "result" if phase != after == "succeeded" else ""))

    panel.timer.timeout.disconnect()
    panel.timer.timeout.connect(timed)
    panel.address.setText(cfg["engine"])
    panel.connect_button.click()

    def spin(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            app.processEvents()
            time.sleep(0.002)

    spin(lambda: panel.session.connected, 30)
    panel.prompt.setPlainText("bench")
    panel.steps.setValue(8)
    out = []
    for _ in range(cfg["jobs"]):
        ticks.clear()
        t0 = time.perf_counter()
        panel.generate_button.click()
        generate_ms = (time.perf_counter() - t0) * 1000
        spin(lambda: not panel.session.busy and any(k for _, k in ticks), 60)
        durations = [d * 1000 for d, _ in ticks]
        result = [d * 1000 for d, k in ticks if k]
        before = [d * 1000 for d, k in ticks[:-1] if not k] or [0.0]
        out.append({"ticks": len(durations), "median": statistics.median(durations),
                    "max_before": max(before), "result": result[0] if result else None,
                    "generate": generate_ms, "phase": panel.session.job.phase})
        for node in doc.topLevelNodes()[1:]:
            node.remove()
    panel.shutdown()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sides", default="1000,1024,2048")
    ap.add_argument("--jobs", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zip_path = tmp / "zimage_krita.zip"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_krita_plugin.py"),
                        "--platforms", "linux-x64", "--out", str(zip_path)], check=True,
                       capture_output=True)
        (tmp / "res").mkdir()
        subprocess.run([sys.executable, str(IMPORTER), str(zip_path), str(tmp / "res")],
                       check=True, capture_output=True)
        out = tmp / "bench.json"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # the engine's connection file (with its local token) where Krita's panel looks
        run_dir = {"ZIMAGE_RUNTIME_DIR": str(tmp / "run")}
        engine = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--standin",
                                   "--step-seconds", "0.05", "--bind",
                                   f"tcp://127.0.0.1:{port}"], cwd=ROOT,
                                  env=dict(os.environ, **run_dir),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        engine.stdout.readline()              # "ready ..."
        r, w = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x1024x24",
                                 "-nolisten", "tcp"], pass_fds=(w,))
        os.close(w)
        with os.fdopen(r) as fh:
            display = ":" + fh.readline().strip()
        env = dict(os.environ, **run_dir, DISPLAY=display, HOME=str(tmp),
                   XDG_RUNTIME_DIR=str(tmp),
                   XDG_CONFIG_HOME=str(tmp / "config"), XDG_DATA_HOME=str(tmp / "data"),
                   PYTHONPATH=f"{tmp / 'res' / 'pykrita'}{os.pathsep}{ROOT / 'scripts'}",
                   ZIMAGE_BENCH=json.dumps({"out": str(out), "runs": args.runs,
                                            "engine": f"tcp://127.0.0.1:{port}",
                                            "jobs": args.jobs,
                                            "sides": [int(s) for s in args.sides.split(",")]}))
        try:
            res = subprocess.run(["kritarunner", "-s", "bench_krita", "-f", "krita_main"],
                                 env=env, capture_output=True, text=True, timeout=900)
        finally:
            xvfb.terminate()
            xvfb.wait()
            engine.terminate()
            engine.wait()
        if not out.exists():
            print(res.stdout[-2000:] + res.stderr[-3000:], file=sys.stderr)
            return 1
        data = json.loads(out.read_text())
    rows = data["rows"]
    print("| canvas | engine size | UI: capture + request ms | worker: result -> layer "
          "pixels ms | worker, with mask ms | UI: new layer ms | UI: new layer, with mask ms "
          "| Krita finishing the projection ms |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cell = [f"{statistics.median(row[k]):.1f} / {max(row[k]):.1f}"
                for k in ("capture", "convert", "convert_mask", "apply", "apply_mask",
                          "wait")]
        print(f"| {row['side']}² | {row['engine_size'][0]} x {row['engine_size'][1]} | "
              + " | ".join(cell) + " |")
    print("\n(median / max of", args.runs, "runs)\n")
    print("| job | pump ticks | median tick ms | longest tick before the result ms | "
          "tick that applied the result ms | Generate click ms | end |")
    print("|---|---|---|---|---|---|---|")
    for i, job in enumerate(data["jobs"], 1):
        res = f"{job['result']:.1f}" if job["result"] is not None else "-"
        print(f"| {i} | {job['ticks']} | {job['median']:.2f} | {job['max_before']:.1f} | "
              f"{res} | {job['generate']:.1f} | {job['phase']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
