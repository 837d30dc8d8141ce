"""Events of the sans-IO HTTP/2 connection (see events.pxd for the fields)."""
from meshcore.errors import error_code_name

cdef class Event:
    _fields = ()

    def __repr__(self):
        parts = []
        for name in self._fields:
            value = getattr(self, name)
            if name == "error_code":
                parts.append(f"error_code={error_code_name(value)}")
            elif name == "data":
                parts.append(f"data=<{len(value)} bytes>")
            else:
                parts.append(f"{name}={value!r}")
        return f"<{type(self).__name__} {' '.join(parts)}>"


cdef class RequestReceived(Event):
    _fields = ("stream_id", "method", "scheme", "authority", "path", "protocol", "headers")

cdef class TunnelRequested(RequestReceived):
    _fields = ("stream_id", "method", "authority", "protocol", "headers")

cdef class ResponseReceived(Event):
    _fields = ("stream_id", "status", "headers")

cdef class TunnelAccepted(ResponseReceived):
    pass

cdef class TunnelRefused(ResponseReceived):
    pass

cdef class InformationalResponseReceived(Event):
    _fields = ("stream_id", "status", "headers")

cdef class DataReceived(Event):
    _fields = ("stream_id", "data")

cdef class StreamEnded(Event):
    _fields = ("stream_id",)

cdef class TrailersReceived(Event):
    _fields = ("stream_id", "headers")

cdef class StreamReset(Event):
    _fields = ("stream_id", "error_code", "remote", "reason")

cdef class WindowOpened(Event):
    _fields = ("stream_id", "delta")

cdef class SettingsChanged(Event):
    _fields = ("changed",)

cdef class SettingsAcknowledged(Event):
    pass

cdef class PingAcknowledged(Event):
    _fields = ("data",)

cdef class ConnectionTerminated(Event):
    _fields = ("error_code", "last_stream_id", "additional_data", "remote", "reason")
