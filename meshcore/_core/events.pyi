class Event: ...

class RequestReceived(Event):
    stream_id: int
    method: str
    scheme: str
    authority: str
    path: str
    protocol: str
    headers: list[tuple[bytes, bytes]]

class TunnelRequested(RequestReceived): ...

class ResponseReceived(Event):
    stream_id: int
    status: int
    headers: list[tuple[bytes, bytes]]

class TunnelAccepted(ResponseReceived): ...

class TunnelRefused(ResponseReceived): ...

class InformationalResponseReceived(Event):
    stream_id: int
    status: int
    headers: list[tuple[bytes, bytes]]

class DataReceived(Event):
    stream_id: int
    data: bytes | memoryview

class StreamEnded(Event):
    stream_id: int

class TrailersReceived(Event):
    stream_id: int
    headers: list[tuple[bytes, bytes]]

class StreamReset(Event):
    stream_id: int
    error_code: int
    remote: bool
    reason: str

class WindowOpened(Event):
    stream_id: int
    delta: int

class SettingsChanged(Event):
    changed: dict[int, int]

class SettingsAcknowledged(Event): ...

class PingAcknowledged(Event):
    data: bytes

class ConnectionTerminated(Event):
    error_code: int
    last_stream_id: int
    additional_data: bytes
    remote: bool
    reason: str
