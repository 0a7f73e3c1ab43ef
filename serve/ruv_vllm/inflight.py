"""Which HTTP requests are still being answered, in arrival order.

A request resolves its adapter once, early in its handler; when the slot swaps, requests that
arrived before the swap may still hold the old generation. The old one is unloaded only when every
request that arrived before the swap has finished (SGLang's rule), which this ASGI middleware can
tell without parsing a body: it numbers requests as they arrive and knows which are still open
(a streaming answer is open until its last chunk is sent).
"""

from __future__ import annotations

import itertools


class InFlight:
    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._open: set[int] = set()

    def enter(self) -> int:
        number = next(self._numbers)
        self._open.add(number)
        return number

    def leave(self, number: int) -> None:
        self._open.discard(number)

    def mark(self) -> int:
        """A number larger than every request that has arrived so far."""
        return next(self._numbers)

    def drained_before(self, mark: int) -> bool:
        """Whether every request that arrived before `mark` has finished."""
        return not self._open or min(self._open) > mark

    @property
    def open_count(self) -> int:
        return len(self._open)


class InFlightMiddleware:
    def __init__(self, app, tracker: InFlight) -> None:
        self.app = app
        self.tracker = tracker

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        number = self.tracker.enter()
        try:
            return await self.app(scope, receive, send)
        finally:
            self.tracker.leave(number)
