"""Pool decisions as pure bookkeeping, so they can be table-tested:

- a key is (source identity, expected destination identities, destination address,
  source IP); streams of different keys never share a connection;
- a stream goes on the usable connection of its key with the most streams that still
  has room (filling connections keeps their number low), the oldest on ties;
- room is min(configured max, the peer's SETTINGS_MAX_CONCURRENT_STREAMS);
- one dial per key at a time: begin_dial() says whether the caller dials or waits;
- retired connections (GOAWAY, failed PING, idle) take no new streams and are closed
  once their last stream ends (release()/retire() return True then);
- idle(): connections without a checkout for idle_timeout and no streams.
"""


cdef class PoolEntry:
    def __repr__(self):
        return (f"<PoolEntry {self.conn_id!r} active={self.active}/{self.limit}"
                f"{' retired' if self.retired else ''}>")


cdef class PoolCore:
    def __init__(self, int max_streams=100, double idle_timeout=300.0):
        self._by_key = {}
        self._entries = {}
        self._dialing = set()
        self._serial = 0
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout

    def entries(self, key=None):
        if key is None:
            return list(self._entries.values())
        return list(self._by_key.get(key, ()))

    cpdef object checkout(self, object key, double now):
        """A connection id with room for one more stream (reserved), or None."""
        cdef PoolEntry e, best = None
        for e in self._by_key.get(key, ()):
            if e.retired or e.active >= e.limit:
                continue
            if best is None or e.active > best.active:
                best = e
        if best is None:
            return None
        best.active += 1
        best.last_checkout = now
        return best.conn_id

    cpdef bint begin_dial(self, object key):
        if key in self._dialing:
            return False
        self._dialing.add(key)
        return True

    cpdef end_dial(self, object key):
        self._dialing.discard(key)

    cpdef add(self, object key, object conn_id, int peer_limit, double now):
        cdef PoolEntry e = PoolEntry.__new__(PoolEntry)
        e.key = key
        e.conn_id = conn_id
        e.active = 0
        e.limit = min(self.max_streams, peer_limit)
        e.retired = False
        e.last_checkout = now
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

    cpdef set_limit(self, object conn_id, int peer_limit):
        e = self._entries.get(conn_id)
        if e is not None:
            (<PoolEntry>e).limit = min(self.max_streams, peer_limit)

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
        """Connections unused for idle_timeout: retired here, to be closed by the caller."""
        cdef PoolEntry e
        out = []
        for e in self._entries.values():
            if not e.retired and e.active == 0 and now - e.last_checkout >= self.idle_timeout:
                e.retired = True
                out.append(e.conn_id)
        return out
