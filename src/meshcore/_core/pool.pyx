"""Pool decisions as pure bookkeeping, so they can be table-tested:

- a key is (source identity, expected destination identities, destination address,
  source IP); streams of different keys never share a connection;
- a stream goes on the usable connection of its key with the most streams that still
  has room (filling connections keeps their number low), the oldest on ties;
- room is min(configured max, the peer's SETTINGS_MAX_CONCURRENT_STREAMS);
- one dial per key at a time: acquire() answers DIAL to one caller and WAIT_DIAL to
  the others until add() or end_dial();
- at most max_connections connections per key (a dial in progress counts, retired
  ones do not): beyond that, callers wait for a stream to end (WAIT_ROOM);
- a peer that refuses streams (MAX_CONCURRENT_STREAMS 0, or REFUSED_STREAM outside a
  GOAWAY) is not dialed again for refusal_hold seconds: acquire() answers REFUSED
  when no other connection of the key has room. A connection whose peer allows no
  stream at all is closed by idle() once that time has passed;
- a stream refused because its connection is going away, or because the peer's limit
  was lower than the pool believed, is tried on up to max_attempts connections in all;
  one the peer refused is not tried again (retry());
- retired connections (GOAWAY, failed PING, idle) take no new streams and are closed
  once their last stream ends (release()/retire() return True then);
- idle(): connections without a checkout for idle_timeout and no streams.
"""


cdef class PoolEntry:
    def __repr__(self):
        return (f"<PoolEntry {self.conn_id!r} active={self.active}/{self.limit}"
                f"{' retired' if self.retired else ''}"
                f"{f' refusing until {self.refusing_until:g}' if self.refusing_until >= 0 else ''}>")


cdef class PoolCore:
    def __init__(self, int max_streams=100, double idle_timeout=300.0, int max_connections=64,
                 double refusal_hold=2.0, int max_attempts=3):
        self._by_key = {}
        self._entries = {}
        self._dialing = set()
        self._serial = 0
        self.max_streams = max_streams
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.refusal_hold = refusal_hold
        self.max_attempts = max_attempts

    def entries(self, key=None):
        if key is None:
            return list(self._entries.values())
        return list(self._by_key.get(key, ()))

    def dialing(self, key) -> bool:
        return key in self._dialing

    cpdef tuple acquire(self, object key, double now):
        """(USE, connection id) with a slot reserved on it, or (step, None) for DIAL,
        WAIT_DIAL, WAIT_ROOM or REFUSED."""
        cdef PoolEntry e, best = None
        cdef int live = 0
        cdef bint refusing = False
        for e in self._by_key.get(key, ()):
            if e.retired:
                continue
            live += 1
            if e.refusing_until >= 0:
                if now < e.refusing_until:
                    refusing = True
                    continue
                if e.limit > 0:
                    e.refusing_until = -1.0     # the hold is over: this peer is asked again
            if e.active >= e.limit:
                continue
            if best is None or e.active > best.active:
                best = e
        if best is not None:
            best.active += 1
            best.last_checkout = now
            return (USE, best.conn_id)
        if key in self._dialing:
            return (WAIT_DIAL, None)
        if refusing:
            return (REFUSED, None)
        if live >= self.max_connections:
            return (WAIT_ROOM, None)
        self._dialing.add(key)
        return (DIAL, None)

    cpdef end_dial(self, object key):
        """The key's dial ended without a connection (failed or abandoned)."""
        self._dialing.discard(key)

    cpdef add(self, object key, object conn_id, int peer_limit, double now):
        """A dialed connection joins the pool; the key's dial is over."""
        cdef PoolEntry e = PoolEntry.__new__(PoolEntry)
        e.key = key
        e.conn_id = conn_id
        e.active = 0
        e.limit = min(self.max_streams, peer_limit)
        e.retired = False
        e.last_checkout = now
        e.refusing_until = now + self.refusal_hold if e.limit <= 0 else -1.0
        e.serial = self._serial
        self._serial += 1
        self._entries[conn_id] = e
        self._by_key.setdefault(key, []).append(e)
        self._dialing.discard(key)

    cpdef bint release(self, object conn_id, double now):
        """A stream ended. True: the connection is retired and now unused, close it."""
        e = self._entries.get(conn_id)
        if e is None:
            return False
        if (<PoolEntry>e).active > 0:
            (<PoolEntry>e).active -= 1
        return (<PoolEntry>e).retired and (<PoolEntry>e).active == 0

    cpdef set_limit(self, object conn_id, int peer_limit, double now):
        """The peer's SETTINGS (or a refusal showing its real limit). A limit of 0 is a
        refusal; the first one above 0 after it ends the refusal."""
        e = self._entries.get(conn_id)
        if e is None:
            return
        cdef int limit = min(self.max_streams, peer_limit)
        if limit <= 0 < (<PoolEntry>e).limit:
            (<PoolEntry>e).refusing_until = now + self.refusal_hold
        elif (<PoolEntry>e).limit <= 0 < limit:
            (<PoolEntry>e).refusing_until = -1.0
        (<PoolEntry>e).limit = limit

    cpdef refused(self, object conn_id, double now):
        """The peer refused a stream on this connection, not because it is going away."""
        e = self._entries.get(conn_id)
        if e is not None:
            (<PoolEntry>e).refusing_until = now + self.refusal_hold

    cpdef bint retry(self, OpenFailure why, int attempt):
        """May a stream whose `attempt`-th try (1 = the first) failed for `why` be
        tried again? Only streams the peer never processed and did not itself refuse."""
        if why == PEER_REFUSED:
            return False
        return attempt < self.max_attempts

    cpdef bint retire(self, object conn_id):
        """No new streams on this connection. True: it has none open, close it now."""
        e = self._entries.get(conn_id)
        if e is None:
            return False
        (<PoolEntry>e).retired = True
        return (<PoolEntry>e).active == 0

    cpdef remove(self, object conn_id):
        e = self._entries.pop(conn_id, None)
        if e is not None:
            lst = self._by_key.get((<PoolEntry>e).key)
            if lst is not None:
                lst.remove(e)
                if not lst:
                    del self._by_key[(<PoolEntry>e).key]

    cpdef list idle(self, double now):
        """Connections to close, retired here: unused for idle_timeout, or unused and
        allowed no stream by their peer once the refusal hold has passed."""
        cdef PoolEntry e
        out = []
        for e in self._entries.values():
            if e.retired or e.active:
                continue
            if now - e.last_checkout >= self.idle_timeout or (
                    e.limit <= 0 and now >= e.refusing_until):
                e.retired = True
                out.append(e.conn_id)
        return out
