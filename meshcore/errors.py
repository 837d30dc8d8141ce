"""meshcore's one exception tree, raised by the compiled core and the asyncio shell alike.

Every error says what happened, where and why, and carries what it becomes at the
edge: an HTTP/2 error code (RFC 9113 section 7) or an HTTP status.

    MeshcoreError
    ├── ProtocolError            the peer broke HTTP/2; .error_code, .stream_id (0: connection)
    │   ├── FrameSizeError       FRAME_SIZE_ERROR
    │   ├── FlowControlError     FLOW_CONTROL_ERROR
    │   ├── CompressionError     COMPRESSION_ERROR (bad HPACK)
    │   ├── HeaderListTooLarge   decoded header list over the limit (ENHANCE_YOUR_CALM)
    │   └── ResourceLimitError   a hardening limit tripped (ENHANCE_YOUR_CALM)
    ├── UsageError               the caller asked for something the protocol forbids
    │   ├── StreamClosedError    sending on a stream that can no longer send
    │   ├── WindowExceededError  more data than the flow-control window allows
    │   └── TooManyStreamsError  the peer's MAX_CONCURRENT_STREAMS is reached
    ├── TunnelError              a tunnel failed; .status is the HTTP status (401, 503, ...)
    │   └── StreamRefusedError   the peer refused the stream unprocessed (REFUSED_STREAM)
    ├── StreamResetError         a request's stream was reset before its exchange completed;
    │                            .error_code, .stream_id, .remote
    ├── HttpError                an HTTP/1.1 message meshcore refuses or cannot finish;
    │                            .status (400, 408, 413, 431, 501, 505; 502 upstream), .reason
    ├── IdentityError            certificates, SPIFFE ids, trust bundles
    └── ConfigError              a refused configuration; .source, .document, .path, .reason
"""
from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ErrorCode",
    "MeshcoreError",
    "ProtocolError",
    "FrameSizeError",
    "FlowControlError",
    "CompressionError",
    "HeaderListTooLarge",
    "ResourceLimitError",
    "UsageError",
    "StreamClosedError",
    "WindowExceededError",
    "TooManyStreamsError",
    "TunnelError",
    "StreamRefusedError",
    "StreamResetError",
    "HttpError",
    "IdentityError",
    "ConfigError",
    "ListenerError",
]


class ErrorCode(IntEnum):
    """HTTP/2 error codes, RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"UNKNOWN_ERROR_0x{code:x}"


class MeshcoreError(Exception):
    """Base of every error meshcore raises on purpose."""


class ProtocolError(MeshcoreError):
    """The peer violated HTTP/2 (or HPACK).

    ``stream_id == 0`` means a connection error (GOAWAY); otherwise a stream error
    (RST_STREAM on that stream only).
    """

    default_code = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str, error_code: int | None = None, stream_id: int = 0):
        super().__init__(message)
        self.error_code = ErrorCode(self.default_code if error_code is None else error_code)
        self.stream_id = stream_id

    @property
    def is_stream_error(self) -> bool:
        return self.stream_id != 0

    def __str__(self) -> str:
        where = f"stream {self.stream_id}" if self.stream_id else "connection"
        return f"{self.error_code.name} on {where}: {self.args[0]}"


class FrameSizeError(ProtocolError):
    default_code = ErrorCode.FRAME_SIZE_ERROR


class FlowControlError(ProtocolError):
    default_code = ErrorCode.FLOW_CONTROL_ERROR


class CompressionError(ProtocolError):
    default_code = ErrorCode.COMPRESSION_ERROR


class ResourceLimitError(ProtocolError):
    default_code = ErrorCode.ENHANCE_YOUR_CALM


class HeaderListTooLarge(ResourceLimitError):
    pass


class UsageError(MeshcoreError):
    """The caller asked the protocol engine for something HTTP/2 forbids."""


class StreamClosedError(UsageError):
    def __init__(self, message: str, stream_id: int = 0):
        super().__init__(message)
        self.stream_id = stream_id


class WindowExceededError(UsageError):
    pass


class TooManyStreamsError(UsageError):
    pass


class TunnelError(MeshcoreError):
    """A tunnel could not be established or broke; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(message)
        self.status = status


class StreamRefusedError(TunnelError):
    """The peer reset the tunnel's stream with REFUSED_STREAM before answering it, so it
    did nothing with it. ``going_away``: the refusal came with the peer's GOAWAY (the
    connection is ending; another connection may take the tunnel). ``before_settings``:
    the stream was sent before the peer's SETTINGS, so it may have been over a stream
    limit not known yet. Neither: the peer is refusing new streams."""

    def __init__(self, message: str, going_away: bool = False, before_settings: bool = False):
        super().__init__(message, 503)
        self.going_away = going_away
        self.before_settings = before_settings


class StreamResetError(MeshcoreError):
    """A request's stream was reset before its exchange was complete: by the peer
    (``remote``), or by meshcore because the peer's message was malformed. What was
    received before stays valid; what was to come will not. ``error_code`` is the RFC
    9113 code of the RST_STREAM."""

    def __init__(self, message: str, error_code: int, stream_id: int, remote: bool):
        super().__init__(message)
        self.error_code = ErrorCode(error_code) if error_code in ErrorCode._value2member_map_ else error_code
        self.stream_id = stream_id
        self.remote = remote


class HttpError(MeshcoreError):
    """An HTTP/1.1 message was malformed, too large, too slow or cut short. ``status`` is
    the response it becomes: a downstream client's fault is a 4xx or 5xx answered on its
    own connection before closing it, an upstream's is 502 for the waypoint to answer
    downstream. ``reason`` is one line for logs and for the refusal's body."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class IdentityError(MeshcoreError):
    """A certificate, key, SPIFFE id or trust bundle is unusable or refused.

    ``reason`` is a short stable code for metrics and logs (``untrusted_chain``,
    ``expired``, ``not_yet_valid``, ``no_client_certificate``, ``trust_domain``,
    ``no_spiffe_id``, ``tls_version``, ``alpn``, ``cipher``, ``unexpected_identity``,
    ``handshake``, ``invalid``)."""

    def __init__(self, message: str, reason: str = "invalid"):
        super().__init__(message)
        self.reason = reason


class ConfigError(MeshcoreError):
    """A configuration file was refused as a whole; the previous one stays in force."""

    def __init__(self, reason: str, *, source: str = "<config>", document: int | None = None,
                 path: str = ""):
        self.source = source
        self.document = document
        self.path = path
        self.reason = reason
        where = source
        if document is not None:
            where += f", document {document}"
        if path:
            where += f", at {path}"
        super().__init__(f"{where}: {reason}")


class ListenerError(MeshcoreError):
    """A listener could not take its address (in use, not local, no permission)."""
