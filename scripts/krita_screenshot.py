#!/usr/bin/env python3
"""Screenshot of the Z-Image docker in a real Krita window under Xvfb (docs/krita-docker.png).

    python scripts/krita_screenshot.py [--out docs/krita-docker.png] [--engine tcp://127.0.0.1:5555]

Builds the plugin zip, installs it into a throw-away Krita profile (pykrita folder + kritarc
with the plugin enabled), adds a one-off helper plugin that opens a document, shows the
docker, optionally generates one image with the given engine (then the docker shows the
result's layer, history and progress), saves the window's dock column (Layers and Z-Image
dockers) with QWidget.grab() and quits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HELPER = r'''
import os
from krita import Extension, Krita
from PyQt5.QtCore import QRect, QTimer
from PyQt5.QtWidgets import QDockWidget

OUT = os.environ["ZIMAGE_SHOT_OUT"]
ENGINE = os.environ.get("ZIMAGE_SHOT_ENGINE", "")


class Shot(Extension):
    def setup(self):
        Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(3000, self.stage))

    def createActions(self, window):
        pass

    def stage(self):
        app = Krita.instance()
        self.window = app.activeWindow()
        doc = app.createDocument(768, 512, "lighthouse", "RGBA", "U8", "", 72.0)
        self.window.addView(doc)
        qwin = self.window.qwindow()
        qwin.resize(1600, 1000)
        dock = qwin.findChild(QDockWidget, "zimage_krita_docker")
        dock.show()
        dock.raise_()
        panel = dock.widget()
        panel.prompt.setPlainText("a lighthouse on a cliff at dusk, watercolor")
        panel.seed_random.setChecked(False)
        panel.seed.setValue(42)
        panel.steps.setValue(8)
        self.panel = panel
        if ENGINE:
            panel.address.setText(ENGINE)
            panel.connect_button.click()
            self.tries = 0
            QTimer.singleShot(500, self.generate)
        else:
            QTimer.singleShot(1500, self.grab)

    def generate(self):
        self.tries += 1
        if not self.panel.session.connected and self.tries < 60:
            QTimer.singleShot(500, self.generate)
            return
        self.panel.generate_button.click()
        QTimer.singleShot(500, self.wait)

    def wait(self):
        if self.panel.session.busy:
            QTimer.singleShot(500, self.wait)
            return
        QTimer.singleShot(1500, self.grab)

    def grab(self):
        # the right-hand dock column: the Layers docker (with the new layer) above ours
        qwin = self.window.qwindow()
        dock = qwin.findChild(QDockWidget, "zimage_krita_docker")
        x = dock.mapTo(qwin, dock.rect().topLeft()).x() - 4
        qwin.grab(QRect(x, 0, qwin.width() - x, qwin.height())).save(OUT, "PNG")
        os._exit(0)   # no save prompts, no session restore


Krita.instance().addExtension(Shot(Krita.instance()))
'''

DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=zimage_shot
X-Python-2-Compatible=false
Name=Z-Image screenshot helper
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "krita-docker.png")
    ap.add_argument("--engine", default="", help="engine address to generate one image with")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--log", type=Path, default=None, help="keep Krita's log here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zip_path = tmp / "zimage_krita.zip"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_krita_plugin.py"),
                        "--platforms", "linux-x64", "--out", str(zip_path)], check=True)
        pykrita = tmp / "data" / "krita" / "pykrita"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(pykrita)
        (pykrita / "zimage_shot").mkdir()
        (pykrita / "zimage_shot" / "__init__.py").write_text(HELPER)
        (pykrita / "zimage_shot.desktop").write_text(DESKTOP)
        (tmp / "config").mkdir()
        (tmp / "config" / "kritarc").write_text(
            "[python]\nenable_zimage_krita=true\nenable_zimage_shot=true\n")
        out = args.out.resolve()
        out.unlink(missing_ok=True)
        r, w = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1600x1000x24",
                                 "-nolisten", "tcp"], pass_fds=(w,))
        os.close(w)
        with os.fdopen(r) as fh:
            display = ":" + fh.readline().strip()
        env = dict(os.environ, DISPLAY=display, HOME=str(tmp), XDG_DATA_HOME=str(tmp / "data"),
                   XDG_CONFIG_HOME=str(tmp / "config"), XDG_RUNTIME_DIR=str(tmp),
                   ZIMAGE_SHOT_OUT=str(out), ZIMAGE_SHOT_ENGINE=args.engine)
        env.pop("PYTHONPATH", None)
        krita = subprocess.Popen(["krita", "--nosplash"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=open(tmp / "krita.log", "w"))
        try:
            end = time.monotonic() + args.timeout
            while time.monotonic() < end and krita.poll() is None:
                time.sleep(0.5)
        finally:
            if krita.poll() is None:
                krita.kill()
            krita.wait()
            xvfb.terminate()
            xvfb.wait()
        log = (tmp / "krita.log").read_text(errors="replace")
        if args.log:
            args.log.write_text(log)
        if not out.exists():
            print(log[-3000:], file=sys.stderr)
            print("no screenshot was taken", file=sys.stderr)
            return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
