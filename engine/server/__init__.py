"""The ZeroMQ engine server, in four parts:

- loop.py    EngineServer: the ROUTER socket, CURVE, the I/O loop, message parsing
- state.py   EngineState: sessions, fair queue, result store, deadlines, backlogs; no sockets,
             injected clock (unit-tested in tests/engine/test_server_state.py)
- worker.py  Worker: runs jobs on the pipeline, progress fraction, previews, results
- images.py  image bytes: raw/PNG results, preview JPEGs, safe decoding of client images

    server = EngineServer(pipeline, bind="tcp://127.0.0.1:5555").start()
"""

from .images import decode_image_blob
from .jobs import Job, JobStore
from .loop import EngineServer, InsecureBindError, is_loopback_endpoint
from .sessions import Session, Sessions
from .state import EngineState, PeerBusy, PeerGone

__all__ = ["EngineServer", "EngineState", "InsecureBindError", "Job", "JobStore", "PeerBusy", "PeerGone",
           "Session", "Sessions", "decode_image_blob", "is_loopback_endpoint"]
