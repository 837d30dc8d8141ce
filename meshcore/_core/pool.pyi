from enum import IntEnum
from typing import Any, Hashable

class Step(IntEnum):
    USE: int
    DIAL: int
    WAIT_DIAL: int
    WAIT_ROOM: int
    REFUSED: int

class OpenFailure(IntEnum):
    GOING_AWAY: int
    OVER_LIMIT: int
    PEER_REFUSED: int

class PoolEntry:
    key: Hashable
    conn_id: Hashable
    active: int
    limit: int
    retired: bool
    last_checkout: float
    refusing_until: float
    serial: int

class PoolCore:
    max_streams: int
    max_connections: int
    idle_timeout: float
    refusal_hold: float
    max_attempts: int
    def __init__(self, max_streams: int = ..., idle_timeout: float = ..., max_connections: int = ...,
                 refusal_hold: float = ..., max_attempts: int = ...) -> None: ...
    def entries(self, key: Hashable | None = ...) -> list[PoolEntry]: ...
    def dialing(self, key: Hashable) -> bool: ...
    def acquire(self, key: Hashable, now: float) -> tuple[Step, Any]: ...
    def end_dial(self, key: Hashable) -> None: ...
    def add(self, key: Hashable, conn_id: Hashable, peer_limit: int, now: float) -> None: ...
    def release(self, conn_id: Hashable, now: float) -> bool: ...
    def set_limit(self, conn_id: Hashable, peer_limit: int, now: float) -> None: ...
    def refused(self, conn_id: Hashable, now: float) -> None: ...
    def retry(self, why: OpenFailure, attempt: int) -> bool: ...
    def retire(self, conn_id: Hashable) -> bool: ...
    def remove(self, conn_id: Hashable) -> None: ...
    def idle(self, now: float) -> list: ...
