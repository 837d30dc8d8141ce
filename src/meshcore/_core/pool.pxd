# Sans-IO HBONE connection pool bookkeeping (docs/hbone.md, Connection pool): which connection a
# new stream goes on, when to dial, when to wait, when to give up, when a connection leaves the
# pool. No I/O, no clock: every method that needs the time is given it.

# What acquire() tells the caller to do.
cpdef enum Step:
    USE             # a stream slot is reserved on the connection returned with it
    DIAL            # dial for the key (the dial is marked in progress; add() or end_dial() ends it)
    WAIT_DIAL       # a dial for the key is under way: wait for it, then acquire again
    WAIT_ROOM       # the key has max_connections connections, all full: wait for a stream to end
    REFUSED         # the key's peer refuses new streams: fail without dialing

# Why a stream could not be opened on the connection acquire() chose.
cpdef enum OpenFailure:
    GOING_AWAY      # GOAWAY either way, or stream ids used up: the stream was never processed
    OVER_LIMIT      # the peer's MAX_CONCURRENT_STREAMS was lower than the pool's count
    PEER_REFUSED    # RST_STREAM REFUSED_STREAM without GOAWAY: the peer is refusing streams

cdef class PoolEntry:
    cdef readonly object key
    cdef readonly object conn_id
    cdef readonly int active            # streams checked out
    cdef readonly int limit             # min(configured, peer's MAX_CONCURRENT_STREAMS)
    cdef readonly bint retired          # GOAWAY / failed PING / idle: no new streams
    cdef readonly double last_checkout
    cdef readonly double refusing_until # the peer refused streams: none go here, none dialed, until then
    cdef readonly Py_ssize_t serial     # creation order (older first on ties)

cdef class PoolCore:
    cdef dict _by_key                   # key -> [PoolEntry]
    cdef dict _entries                  # conn_id -> PoolEntry
    cdef set _dialing                   # keys with a dial in progress
    cdef Py_ssize_t _serial
    cdef public int max_streams         # per connection, before the peer's own limit
    cdef public int max_connections     # per key, retired ones not counted, a dial in progress counted
    cdef public double idle_timeout
    cdef public double refusal_hold     # seconds a refusing peer is not asked again
    cdef public int max_attempts        # connections one stream is tried on (GOAWAY, the peer's limit)

    cpdef tuple acquire(self, object key, double now)
    cpdef end_dial(self, object key)
    cpdef add(self, object key, object conn_id, int peer_limit, double now)
    cpdef bint release(self, object conn_id, double now)
    cpdef set_limit(self, object conn_id, int peer_limit, double now)
    cpdef refused(self, object conn_id, double now)
    cpdef bint retry(self, OpenFailure why, int attempt)
    cpdef bint retire(self, object conn_id)
    cpdef remove(self, object conn_id)
    cpdef list idle(self, double now)
