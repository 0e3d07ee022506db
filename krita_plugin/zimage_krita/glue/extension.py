"""Registration: the docker and two actions (Tools > Scripts), and the engine stopped when
Krita quits."""

from __future__ import annotations

from krita import DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

DOCKER_ID = "zimage_krita_docker"
PANELS: list = []            # live docker panels, for the actions


def _panel():
    return next((p for p in reversed(PANELS) if p.isVisible()), PANELS[-1] if PANELS else None)


class ZImageExtension(Extension):
    def setup(self):
        app = Krita.instance()
        try:
            app.notifier().applicationClosing.connect(self._closing)
        except AttributeError:
            pass

    def createActions(self, window):     # noqa: N802 (Krita's name)
        gen = window.createAction("zimage_generate", "Z-Image: Generate", "tools/scripts")
        gen.triggered.connect(lambda: _panel() and _panel().generate())
        cancel = window.createAction("zimage_cancel", "Z-Image: Cancel", "tools/scripts")
        cancel.triggered.connect(lambda: _panel() and _panel().cancel())

    def _closing(self):
        for panel in PANELS:
            panel.shutdown()


def register() -> None:
    from .docker import ZImageDocker
    app = Krita.instance()
    app.addExtension(ZImageExtension(app))
    app.addDockWidgetFactory(DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight,
                                               ZImageDocker))
