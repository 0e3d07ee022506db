"""Local trust (PROTOCOL.md §8): with a token, a connection must present it in its hello
before the engine answers anything else. The connections (routing ids) that did are
remembered, the most recent `max_routes` of them."""

from __future__ import annotations

import collections
import secrets


class TokenGate:
    def __init__(self, token: str | None, max_routes: int):
        self.token = token
        self.max_routes = max_routes
        self._routes: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def lets_in(self, route: bytes) -> bool:
        return self.token is None or route in self._routes

    def check(self, route: bytes, given: str | None) -> bool:
        """A hello's token: if right (or no token is needed), the route is let in."""
        if self.token is None:
            return True
        if not secrets.compare_digest((given or "").encode("utf-8"), self.token.encode("utf-8")):
            return False
        self._routes[route] = None
        self._routes.move_to_end(route)
        while len(self._routes) > self.max_routes:
            self._routes.popitem(last=False)
        return True
