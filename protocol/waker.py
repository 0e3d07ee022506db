"""Wake a thread blocked in zmq.Poller from any other thread (a socketpair: works on every OS,
unlike a pipe, and zmq polls plain sockets alongside its own)."""

from __future__ import annotations

import socket


class Waker:
    def __init__(self):
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def wake(self) -> None:
        try:
            self.w.send(b"x")
        except OSError:  # the buffer is full: the reader is already due to wake
            pass

    def drain(self) -> None:
        try:
            while self.r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.r.close()
        self.w.close()
