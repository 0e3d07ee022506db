"""Runs INSIDE Krita (kritarunner -s krita_scenarios -f main), with the plugin imported from
its built zip. One Krita start runs every scenario; each drives the docker's real widgets
(buttons clicked, the QTimer pump firing in a spun event loop) and writes what it saw to
$ZIMAGE_KRITA_TEST_OUT/<scenario>.json (+ raw pixel files) for the pytest side to check.

Config: $ZIMAGE_KRITA_TEST, JSON {out, endpoint, dead_endpoint, local_endpoint, python,
root, model, scenarios}.
"""

import json
import os
import signal
import time
import traceback


def pattern(width, height, salt=0):
    """A deterministic RGB test image (the pytest side computes the same bytes)."""
    out = bytearray(width * height * 3)
    i = 0
    for y in range(height):
        for x in range(width):
            out[i] = (x * 7 + y * 3 + salt) % 256
            out[i + 1] = (x * y + 5 * salt) % 256
            out[i + 2] = (x + 2 * y + 11 * salt) % 256
            i += 3
    return bytes(out)


def has_preview(panel):
    pixmap = panel.preview.pixmap()          # None until one is set
    return pixmap is not None and not pixmap.isNull()


class MemoryStore:
    def __init__(self):
        self.values = {}

    def read(self, key, default=""):
        return self.values.get(key, default)

    def write(self, key, value):
        self.values[key] = value


def spin(pred, timeout):
    from PyQt5.QtWidgets import QApplication
    app = QApplication.instance()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if pred():
            return True
        time.sleep(0.01)
    app.processEvents()
    return pred()


class Env:
    def __init__(self, cfg):
        self.cfg = cfg
        self.out = cfg["out"]

    def doc(self, width, height, salt=0):
        from krita import Krita
        from PyQt5.QtCore import QByteArray
        from zimage_krita.core import pixels
        doc = Krita.instance().createDocument(width, height, "zimage-test", "RGBA", "U8", "",
                                              72.0)
        bg = doc.topLevelNodes()[0]
        bg.setPixelData(QByteArray(pixels.rgb_to_bgra(pattern(width, height, salt), width,
                                                      height)), 0, 0, width, height)
        doc.setActiveNode(bg)
        doc.refreshProjection()
        return doc

    def panel(self, doc, endpoint=None, connect=True, layer=None, **settings):
        from zimage_krita.glue.docker import Panel
        panel = Panel(document=lambda: doc, store=MemoryStore(),
                      layer=lambda _doc: layer)   # headless Krita has no active layer
        panel.address.setText(endpoint or self.cfg["endpoint"])
        if connect:
            panel.connect_button.click()
            assert spin(lambda: panel.session.connected, 30), panel.session.engine_line()
        self.set(panel, **settings)
        return panel

    @staticmethod
    def set(panel, prompt="a red fox", mode="generate", source="canvas", size="canvas",
            width=None, height=None, steps=4, seed=11, images=1, strength=0.6,
            seamless=False):
        from zimage_krita.glue.docker import _select
        panel.prompt.setPlainText(prompt)
        _select(panel.mode, mode)
        _select(panel.source, source)
        _select(panel.size, size)
        if width:
            panel.width_box.setValue(width)
            panel.height_box.setValue(height)
        panel.steps.setValue(steps)
        panel.seed_random.setChecked(seed is None)
        if seed is not None:
            panel.seed.setValue(seed)
        panel.num_images.setValue(images)
        panel.strength.setValue(strength)
        panel.seamless.setChecked(seamless)

    def save(self, name, data):
        with open(os.path.join(self.out, name), "wb") as fh:
            fh.write(bytes(data))
        return name

    @staticmethod
    def wait_done(panel, timeout=60):
        return spin(lambda: not panel.session.busy, timeout)

    @staticmethod
    def state(doc):
        from zimage_krita.glue import canvas
        return canvas.snapshot(doc)

    def report(self, panel, doc, initial, **extra):
        names, proj = self.state(doc)
        job = panel.session.job
        out = {"status": panel.status.text(), "layers": names,
               "unchanged": (names, proj) == initial, "phase": job.phase if job else None,
               "error": job.error.code if job is not None and job.error else None}
        out.update(extra)
        return out


def sc_generate(env):
    doc = env.doc(96, 64)
    before = env.state(doc)
    panel = env.panel(doc, prompt="a red fox", seed=11, steps=4)
    panel.generate_button.click()
    done = env.wait_done(panel)
    top = doc.topLevelNodes()[-1]
    pix = env.save("generate.bgra", top.pixelData(0, 0, 96, 64))
    # recall: the history row brings prompt, seed and steps back into the docker
    env.set(panel, prompt="something else", seed=None, steps=8)
    panel.history.setCurrentRow(0)
    panel.recall_button.click()
    recalled = {"prompt": panel.prompt.toPlainText(), "seed": panel.seed.value(),
                "random": panel.seed_random.isChecked(), "steps": panel.steps.value()}
    out = env.report(panel, doc, before, done=done, pixels=pix, top=top.name(),
                     history=[panel.history.item(i).text() for i in range(panel.history.count())],
                     recalled=recalled, progress=panel.progress.value(),
                     preview=has_preview(panel))
    panel.shutdown()
    return out


def sc_odd_canvas(env):
    doc = env.doc(100, 70)
    panel = env.panel(doc, prompt="a blue bird", seed=13, steps=3)
    panel.generate_button.click()
    done = env.wait_done(panel)
    top = doc.topLevelNodes()[-1]
    out = {"done": done, "status": panel.status.text(), "top": top.name(),
           "bounds": [top.bounds().width(), top.bounds().height()],
           "pixels": env.save("odd.bgra", top.pixelData(0, 0, 100, 70))}
    panel.shutdown()
    return out


def sc_seamless(env):
    doc = env.doc(64, 64)
    panel = env.panel(doc, prompt="mossy stones", seed=2, steps=2, seamless=True)
    panel.generate_button.click()
    done = env.wait_done(panel)
    top = doc.topLevelNodes()[-1]
    out = {"done": done, "status": panel.status.text(), "top": top.name(),
           "pixels": env.save("seamless.bgra", top.pixelData(0, 0, 64, 64))}
    panel.shutdown()
    return out


def sc_two_images(env):
    doc = env.doc(64, 64)
    before = env.state(doc)
    panel = env.panel(doc, prompt="two cats", seed=20, steps=2, images=2)
    panel.generate_button.click()
    done = env.wait_done(panel)
    out = env.report(panel, doc, before, done=done)
    panel.shutdown()
    return out


def sc_img2img(env):
    from PyQt5.QtCore import QByteArray
    from zimage_krita.core import pixels
    doc = env.doc(64, 64, salt=0)
    layer = doc.createNode("paint", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    layer.setPixelData(QByteArray(pixels.rgb_to_bgra(pattern(64, 64, salt=3), 64, 64)),
                       0, 0, 64, 64)
    doc.setActiveNode(layer)
    doc.refreshProjection()
    before = env.state(doc)
    panel = env.panel(doc, layer=layer, prompt="oil painting", mode="img2img", source="layer",
                      seed=5,
                      steps=4, strength=0.5)
    panel.generate_button.click()
    done = env.wait_done(panel)
    top = doc.topLevelNodes()[-1]
    out = env.report(panel, doc, before, done=done, top=top.name(),
                     pixels=env.save("img2img.bgra", top.pixelData(0, 0, 64, 64)))
    panel.shutdown()
    return out


def sc_inpaint(env):
    from krita import Selection
    doc = env.doc(72, 60, salt=1)       # not multiples of 16: padded, cropped back
    sel = Selection()
    sel.select(16, 8, 32, 24, 255)
    doc.setSelection(sel)
    before = env.state(doc)
    panel = env.panel(doc, prompt="a red door", mode="inpaint", source="canvas", seed=7,
                      steps=4)
    panel.generate_button.click()
    done = env.wait_done(panel)
    doc.refreshProjection()
    top = doc.topLevelNodes()[-1]
    out = env.report(panel, doc, before, done=done, top=top.name(),
                     before=env.save("inpaint_before.bgra", before[1]),
                     after=env.save("inpaint_after.bgra", doc.pixelData(0, 0, 72, 60)),
                     pixels=env.save("inpaint_layer.bgra", top.pixelData(0, 0, 72, 60)))
    # inpainting without a selection: a message, nothing sent
    doc.setSelection(Selection())
    before2 = env.state(doc)
    panel.generate_button.click()
    out["no_selection"] = env.report(panel, doc, before2)
    panel.shutdown()
    return out


def sc_bad_size(env):
    doc = env.doc(64, 64)
    before = env.state(doc)
    panel = env.panel(doc, size="custom", width=70, height=64)
    panel.generate_button.click()
    spin(lambda: False, 0.5)
    out = env.report(panel, doc, before, sent=panel.session.job is not None)
    panel.shutdown()
    return out


def sc_not_running(env):
    doc = env.doc(64, 64)
    before = env.state(doc)
    panel = env.panel(doc, endpoint=env.cfg["dead_endpoint"], connect=False)
    panel.session.board.connect_timeout = 3.0     # the docker's 8 s, shortened for the test
    panel.generate_button.click()
    done = env.wait_done(panel, 20)
    out = env.report(panel, doc, before, done=done)
    panel.shutdown()
    return out


def sc_cancel(env):
    doc = env.doc(768, 768)
    before = env.state(doc)
    panel = env.panel(doc, prompt="slow", steps=50, seed=3)
    panel.generate_button.click()
    started = spin(lambda: (panel.session.job.step or 0) >= 1, 60)
    preview = spin(lambda: has_preview(panel), 10)
    panel.cancel_button.click()
    # the engine confirms (or finishes anyway); whatever it sends is not applied
    spin(lambda: not panel.session.link.pending(), 30)
    spin(lambda: False, 0.5)
    out = env.report(panel, doc, before, started=started, preview=preview)
    panel.shutdown()
    return out


def sc_killed(env):
    doc = env.doc(768, 768)
    before = env.state(doc)
    panel = env.panel(doc, endpoint=env.cfg["local_endpoint"], connect=False, prompt="slow",
                      steps=50, seed=4)
    panel.python.setText(env.cfg["python"])
    panel.folder.setText(env.cfg["root"])
    panel.model.setText(env.cfg["model"])
    panel.start_button.click()
    connected = spin(lambda: panel.session.connected, 120)
    engine_line = panel.engine_status.text()
    panel.generate_button.click()
    started = spin(lambda: (panel.session.job.step or 0) >= 1, 60)
    pid = panel.session.process.pid
    os.kill(pid, signal.SIGKILL)
    done = env.wait_done(panel, 30)
    spin(lambda: False, 0.5)
    out = env.report(panel, doc, before, connected=connected, engine_line=engine_line,
                     started=started, done=done, engine_after=panel.engine_status.text())
    panel.shutdown()
    return out


SCENARIOS = {name[3:]: fn for name, fn in globals().items() if name.startswith("sc_")}


def main(*_args):
    cfg = json.loads(os.environ["ZIMAGE_KRITA_TEST"])
    env = Env(cfg)
    from krita import Krita
    results = {"plugin": None}
    try:
        import zimage_krita
        from zimage_krita.core import deps, shared
        results["plugin"] = {"file": zimage_krita.__file__, "built": shared.BUILT,
                             "extension": [type(e).__name__ for e in
                                           Krita.instance().extensions()],
                             "pyzmq": deps.ensure_pyzmq(), "krita": Krita.instance().version()}
        import zmq
        results["plugin"]["zmq_file"] = zmq.__file__
    except Exception:
        results["plugin"] = {"exception": traceback.format_exc()}
    for name in cfg.get("scenarios") or list(SCENARIOS):
        t0 = time.monotonic()
        try:
            results[name] = SCENARIOS[name](env)
        except Exception:
            results[name] = {"exception": traceback.format_exc()}
        results[name]["seconds"] = round(time.monotonic() - t0, 2)
        with open(os.path.join(env.out, "results.json"), "w") as fh:
            json.dump(results, fh, indent=1)
