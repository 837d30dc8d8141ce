# Events returned by H2Connection.receive_data(): what the peer did, in order.
from libc.stdint cimport uint32_t

cdef class Event:
    pass

cdef class TunnelRequested(Event):        # server side: a request arrived (usually CONNECT)
    cdef readonly uint32_t stream_id
    cdef readonly str method
    cdef readonly str authority           # "" when absent (non-CONNECT requests may omit it)
    cdef readonly list headers            # regular fields, [(bytes, bytes)], pseudo-headers removed

cdef class TunnelAccepted(Event):         # client side: a 2xx final response
    cdef readonly uint32_t stream_id
    cdef readonly int status
    cdef readonly list headers

cdef class TunnelRefused(Event):          # client side: a non-2xx final response
    cdef readonly uint32_t stream_id
    cdef readonly int status
    cdef readonly list headers

cdef class DataReceived(Event):           # payload bytes (padding removed); acknowledge them
    cdef readonly uint32_t stream_id      # with acknowledge_received_data() once consumed
    cdef readonly object data             # bytes, or for chunks of 64 KiB and more a memoryview
                                          # into the buffer given to receive_data()

cdef class StreamEnded(Event):            # the peer half-closed (END_STREAM)
    cdef readonly uint32_t stream_id

cdef class TrailersReceived(Event):
    cdef readonly uint32_t stream_id
    cdef readonly list headers

cdef class StreamReset(Event):            # the stream is gone; remote: the peer sent RST_STREAM
    cdef readonly uint32_t stream_id
    cdef readonly uint32_t error_code
    cdef readonly bint remote
    cdef readonly str reason

cdef class WindowOpened(Event):           # more may be sent (stream_id 0: the connection)
    cdef readonly uint32_t stream_id
    cdef readonly long long delta

cdef class SettingsChanged(Event):        # the peer's SETTINGS, already applied and ACKed
    cdef readonly dict changed            # {identifier: value}

cdef class SettingsAcknowledged(Event):   # our SETTINGS are now in force
    pass

cdef class PingAcknowledged(Event):
    cdef readonly bytes data

cdef class ConnectionTerminated(Event):   # GOAWAY received (remote) or sent after an error
    cdef readonly uint32_t error_code
    cdef readonly uint32_t last_stream_id
    cdef readonly bytes additional_data
    cdef readonly bint remote
    cdef readonly str reason
