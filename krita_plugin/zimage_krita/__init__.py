"""Z-Image Studio for Krita: a docker that drives the Z-Image engine (protocol/).

Layout: core/ knows nothing about Krita or Qt (requests, jobs, history, the engine link and
the local engine process); glue/ is the Krita side (docker widget, actions, canvas I/O, a
QTimer pump). vendor/protocol/, addon_core/ and wheels/ are put in by
scripts/build_krita_plugin.py. Outside Krita (tests of core/) importing this package
registers nothing.
"""

VERSION = "0.1.0"

try:
    import krita as _krita
except ImportError:      # not inside Krita
    _krita = None

if _krita is not None:
    from .glue.extension import register
    register()
