from collections.abc import Iterable
from typing import Union

_S = Union[str, bytes]

STATIC_TABLE: tuple[tuple[bytes, bytes], ...]
NEVER_INDEXED: frozenset[bytes]
UNINDEXED: frozenset[bytes]

class HeaderEncoder:
    huffman: bool
    never_indexed_names: frozenset[bytes]
    unindexed_names: frozenset[bytes]
    max_table_size: int
    def __init__(self, max_table_size: int = ..., huffman: bool = ...) -> None: ...
    @property
    def table_size(self) -> int: ...
    def encode(self, headers: Iterable[tuple[_S, _S] | tuple[_S, _S, bool]]) -> bytes: ...

class HeaderDecoder:
    max_allowed_table_size: int
    max_header_list_size: int
    def __init__(self, max_header_list_size: int = ..., max_allowed_table_size: int = ...) -> None: ...
    @property
    def table_size(self) -> int: ...
    @property
    def table(self) -> list[tuple[bytes, bytes]]: ...
    def decode(self, block: bytes | bytearray | memoryview) -> list[tuple[bytes, bytes]]: ...
