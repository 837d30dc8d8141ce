# Sans-IO HBONE connection pool bookkeeping (docs/hbone.md, Connection pool): which connection a
# new stream goes on, when to dial, when a connection leaves the pool. No I/O, no clock.

cdef class PoolEntry:
    cdef readonly object key
    cdef readonly object conn_id
    cdef readonly int active            # streams checked out
    cdef readonly int limit             # min(configured, peer's MAX_CONCURRENT_STREAMS)
    cdef readonly bint retired          # GOAWAY / failed PING / idle: no new streams
    cdef readonly double last_checkout
    cdef readonly Py_ssize_t serial     # creation order (older first on ties)

cdef class PoolCore:
    cdef dict _by_key                   # key -> [PoolEntry]
    cdef dict _entries                  # conn_id -> PoolEntry
    cdef set _dialing                   # keys with a dial in progress
    cdef Py_ssize_t _serial
    cdef public int max_streams
    cdef public double idle_timeout

    cpdef object checkout(self, object key, double now)
    cpdef bint begin_dial(self, object key)
    cpdef end_dial(self, object key)
    cpdef add(self, object key, object conn_id, int peer_limit, double now)
    cpdef bint release(self, object conn_id, double now)
    cpdef set_limit(self, object conn_id, int peer_limit)
    cpdef bint retire(self, object conn_id)
    cpdef remove(self, object conn_id)
    cpdef list idle(self, double now)
