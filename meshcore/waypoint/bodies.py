"""A request body kept in memory for sending again (a retry): its chunks while it stays
within RETRY_BODY_LIMIT; past that it is sent once. Mirrors do not keep bodies: they
are streamed to them (waypoint/mirrors.py)."""
from __future__ import annotations

RETRY_BODY_LIMIT = 64 * 1024    # bytes of a request body kept to send again


class KeptBody:
    __slots__ = ("limit", "size", "chunks")

    def __init__(self, limit: int = RETRY_BODY_LIMIT):
        self.limit, self.size, self.chunks = limit, 0, []

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.chunks.append(chunk)
        elif self.chunks:
            self.chunks = []                       # past the bound: this body is sent once

    @property
    def whole(self) -> bytes | None:
        """What was added, if it stayed within the bound."""
        return b"".join(self.chunks) if self.size <= self.limit else None


async def replay(data: bytes):
    """A kept body as a body to send."""
    yield data
