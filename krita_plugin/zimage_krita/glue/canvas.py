"""Reading the document and writing results: the only module that touches pixels in Krita.

Krita's 8-bit RGBA is BGRA in memory; core.pixels converts. Other colour models are refused
with a message rather than guessed at.
"""

from __future__ import annotations

from krita import Krita
from PyQt5.QtCore import QByteArray

from ..core import pixels
from ..core.requests import CANVAS, Capture


class CanvasError(Exception):
    def __init__(self, code: str, detail: str = ""):
        super().__init__(detail or code)
        self.code = code
        self.detail = detail


def check(doc) -> None:
    if doc is None or doc not in Krita.instance().documents():
        raise CanvasError("no_document")
    if doc.colorModel() != "RGBA" or doc.colorDepth() != "U8":
        raise CanvasError("unsupported_color", f"{doc.colorModel()} {doc.colorDepth()}")


def size(doc) -> tuple[int, int]:
    return doc.width(), doc.height()


def snapshot(doc) -> tuple:
    """Layer names and the visible pixels: what 'the document as it was' means in tests and
    in the docker's own checks."""
    doc.refreshProjection()
    w, h = size(doc)
    return ([n.name() for n in doc.topLevelNodes()], bytes(doc.pixelData(0, 0, w, h)))


def current_layer(doc):
    return doc.activeNode()


def capture(doc, source: str, with_mask: bool, layer=None) -> Capture:
    """The source image (visible canvas or the current layer) and, for inpainting, the
    selection as a canvas-sized grey mask (None when nothing is selected)."""
    check(doc)
    w, h = size(doc)
    if source == CANVAS:
        doc.refreshProjection()
        bgra = bytes(doc.pixelData(0, 0, w, h))
    else:
        node = layer
        if node is None:
            raise CanvasError("capture_failed", "no current layer")
        bgra = bytes(node.projectionPixelData(0, 0, w, h))
    if len(bgra) != w * h * 4:
        raise CanvasError("capture_failed", "unexpected pixel data")
    mask = None
    if with_mask:
        sel = doc.selection()
        if sel is not None and sel.width() > 0 and sel.height() > 0:
            mask = bytes(sel.pixelData(0, 0, w, h))
    return Capture(w, h, pixels.bgra_to_rgb(bgra, w, h), mask)


def add_result_layer(doc, name: str, width: int, height: int, bgra: bytes):
    """A new paint layer above the current one (or on top) with the given pixels at the
    canvas origin (core.pixels.layer_pixels made them: with a selection, transparent outside
    it, so only the selection changes)."""
    check(doc)
    node = doc.createNode(name, "paintlayer")
    active = doc.activeNode()
    root = doc.rootNode()
    parent = active.parentNode() if active is not None else None
    if active is not None and parent is not None:
        parent.addChildNode(node, active)
    else:
        root.addChildNode(node, None)
    node.setPixelData(QByteArray(bgra), 0, 0, width, height)
    doc.refreshProjection()
    return node
