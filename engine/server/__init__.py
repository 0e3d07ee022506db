"""The ZeroMQ engine server:

- loop.py           EngineServer: the ROUTER socket, CURVE, the I/O loop, message parsing
- state.py          EngineState: answers messages, schedules, ends jobs; no sockets, injected
                    clock (unit-tested in tests/engine/test_server_state.py). It holds:
  - sessions.py     Sessions: bounded in total and per peer, detached when silent, then gone
  - fair_queue.py   FairQueue: each session's queued jobs, the sessions served round robin
  - jobs.py         Job, JobStore: every job by id; finished ones bounded by TTL, count, bytes
  - outbox.py       Outbox: a session's events held for a slow peer, compacted past its bound
  - trust.py        TokenGate: the local token (the connections that presented it)
- worker.py         Worker: runs jobs on the pipeline, progress fraction, previews, results
- images.py         image bytes: raw/PNG results, preview JPEGs, safe decoding of client images
- cluster.py        ClusterServer: the same server, its jobs run on a Ray Serve farm (optional)

    server = EngineServer(pipeline, bind="tcp://127.0.0.1:5555").start()
"""

from .images import decode_image_blob
from .jobs import Job, JobStore
from .loop import EngineServer, InsecureBindError, is_loopback_endpoint
from .sessions import Session, Sessions
from .state import EngineState, PeerBusy, PeerGone

__all__ = ["EngineServer", "EngineState", "InsecureBindError", "Job", "JobStore", "PeerBusy",
           "PeerGone", "Session", "Sessions", "decode_image_blob", "is_loopback_endpoint"]
