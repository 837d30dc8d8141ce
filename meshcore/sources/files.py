"""Configuration files (and the inline text of LOCAL_XDS) as one source of the mesh store.

The files are read and parsed on a worker thread, so a large YAML file does not stall
the event loop, and are put in force all or nothing: a file that does not parse, or a
resource the store refuses, leaves the previous configuration in force. One reload at
a time: a SIGHUP arriving while the watcher reloads waits for it.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from meshcore.aio.memory import gc_paused
from meshcore.sources import config as file_config
from meshcore.state.changes import Applied
from meshcore.state.store import MeshStore

SOURCE = "files"


class FileSource:
    def __init__(self, store: MeshStore, paths: Sequence[str] = (), inline: str | None = None):
        self.store = store
        self.paths = tuple(paths)
        self.inline = inline
        self.sources: tuple[str, ...] = ()        # what the configuration in force was read from
        self.version = ""
        self._fingerprint = None
        self._parsed: tuple = ((), "")
        self._lock = asyncio.Lock()

    def fingerprint(self) -> tuple:
        """What the files are on disk now (inode, mtime, size), to tell a change cheaply."""
        out = []
        for p in self.paths:
            try:
                st = os.stat(p)
                out.append((p, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((p, None))
        return tuple(out)

    def changed_on_disk(self) -> bool:
        now = self.fingerprint()
        if now == self._fingerprint:
            return False
        self._fingerprint = now        # a refused file is not retried until it changes again
        return True

    def load(self) -> Applied:
        """Read and put in force now (start-up); ConfigError keeps what is in force."""
        self._fingerprint = self.fingerprint()
        parsed = file_config.parse(self.paths, inline=self.inline)
        applied = self.store.replace(SOURCE, parsed.resources, atomic=True, version=parsed.version)
        self.sources, self.version = parsed.sources, parsed.version
        return applied

    def _read(self) -> tuple[list, str]:
        """On the store's worker thread: the resources and their version."""
        with gc_paused():
            parsed = file_config.parse(self.paths, inline=self.inline)
        self._parsed = parsed.sources, parsed.version
        return parsed.resources, parsed.version

    async def reload(self) -> Applied:
        """Read on a worker thread, then put in force through the store's writer;
        ConfigError keeps what is in force."""
        async with self._lock:
            self._fingerprint = self.fingerprint()
            applied = await self.store.replace_async(SOURCE, read=self._read, atomic=True)
            self.sources, self.version = self._parsed
            return applied
