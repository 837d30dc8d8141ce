# Events returned by H2Connection.receive_data(): what the peer did, in order.
from libc.stdint cimport uint32_t

cdef class Event:
    pass

cdef class RequestReceived(Event):        # server side: a request's header section
    cdef readonly uint32_t stream_id
    cdef readonly str method
    cdef readonly str scheme              # "" when absent (CONNECT)
    cdef readonly str authority           # :authority, else the Host field; "" when neither
    cdef readonly str path                # "" when absent (CONNECT)
    cdef readonly str protocol            # extended CONNECT's :protocol (RFC 8441); "" otherwise
    cdef readonly list headers            # regular fields, [(bytes, bytes)], pseudo-headers removed

cdef class TunnelRequested(RequestReceived):   # a CONNECT (plain, or extended with a protocol):
    pass                                  # DATA on its stream is tunnel bytes, never content

cdef class ResponseReceived(Event):       # client side: the final response to a request
    cdef readonly uint32_t stream_id
    cdef readonly int status
    cdef readonly list headers

cdef class TunnelAccepted(ResponseReceived):   # a 2xx final response to a CONNECT
    pass

cdef class TunnelRefused(ResponseReceived):    # a non-2xx final response to a CONNECT
    pass

cdef class InformationalResponseReceived(Event):   # client side: a 1xx response, not final;
    cdef readonly uint32_t stream_id      # several may come before the final one
    cdef readonly int status
    cdef readonly list headers

cdef class DataReceived(Event):           # payload bytes (padding removed); acknowledge them
    cdef readonly uint32_t stream_id      # with acknowledge_received_data() once consumed
    cdef readonly object data             # bytes, or for chunks of 64 KiB and more a memoryview
                                          # into the buffer given to receive_data()

cdef class StreamEnded(Event):            # the peer half-closed (END_STREAM)
    cdef readonly uint32_t stream_id

cdef class TrailersReceived(Event):       # a header section after the message's content,
    cdef readonly uint32_t stream_id      # always followed by StreamEnded
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
