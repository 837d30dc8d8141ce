"""The node's configuration in force, and how a new one replaces it.

ConfigStore holds one MeshState and the compiled PolicyEngine built from it. A new
configuration (from files today, from an xDS stream later: both produce a MeshState)
is checked and compiled completely before it replaces the old one, so a bad one
changes nothing; listeners are told afterwards (to open or close inbound listeners,
and to close connections that policy no longer allows).
"""
from __future__ import annotations

import copy
import gc
import logging
import time
from collections.abc import Callable

from meshcore._core.policy import PolicyEngine
from meshcore.aio.memory import trimmer
from meshcore.errors import ConfigError
from meshcore.node.model import MeshState
from meshcore.policy.layers import l4_reductions

log = logging.getLogger("meshcore.node.config")


class ConfigStore:
    def __init__(self, state: MeshState | None = None):
        self.engine = PolicyEngine((), layer="l4")
        self.state = MeshState()
        self.version = ""
        self.loaded_at = 0.0
        self.generation = 0
        self._listeners: list[Callable[[MeshState, MeshState], None]] = []
        if state is not None:
            self.replace(state)

    def subscribe(self, listener: Callable[[MeshState, MeshState], None]) -> None:
        """listener(old, new) after every change."""
        self._listeners.append(listener)

    def replace(self, state: MeshState) -> None:
        """Compile `state` and put it in force; ConfigError (nothing changed) if it cannot be."""
        # update() compiles only the policies that changed and swaps in new tables, so
        # the copy leaves the engine in force untouched until the swap below
        engine = copy.copy(self.engine)
        engine.root_namespace = state.root_namespace
        try:
            engine.update(state.policies)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # each new or changed policy's reductions once, not at every reload (a set of
        # every version ever seen would grow with each edit)
        previous = {p.key: p for p in self.state.policies}
        for policy in state.policies:
            if previous.get(policy.key) != policy:
                for sentence in l4_reductions(policy):
                    log.warning("%s (%s)", sentence, policy.source or "config")
        old, self.state, self.engine = self.state, state, engine
        self.generation += 1
        self.loaded_at = time.time()
        self.version = state.version or f"generation-{self.generation}"
        # A large configuration is long-lived: keeping it out of the cyclic GC's
        # generations spares every full collection from rescanning it.
        trimmer.trim_now()            # the parsed text and the old configuration
        gc.freeze()
        for listener in self._listeners:
            try:
                listener(old, state)
            except Exception:
                log.exception("configuration listener failed")
