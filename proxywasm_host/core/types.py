"""Numeric enumerations of the proxy-wasm ABI (names follow the spec).

Pure data: no wasmtime, no I/O.  Values are the ones on the wire; see
``abi/*.json`` for the machine-readable copy checked by the test suite.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """``proxy_status_t``: what every ``proxy_*`` host function returns."""

    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class LogLevel(enum.IntEnum):
    """``proxy_log_level_t``. ``OFF`` (6) is only ever returned by the host."""

    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5
    OFF = 6

    @property
    def label(self) -> str:
        return self.name.lower()


class MapType(enum.IntEnum):
    """``proxy_map_type_t``."""

    HTTP_REQUEST_HEADERS = 0
    HTTP_REQUEST_TRAILERS = 1
    HTTP_RESPONSE_HEADERS = 2
    HTTP_RESPONSE_TRAILERS = 3
    GRPC_CALL_INITIAL_METADATA = 4
    GRPC_CALL_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class BufferType(enum.IntEnum):
    """``proxy_buffer_type_t``."""

    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_CALL_MESSAGE = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    FOREIGN_FUNCTION_ARGUMENTS = 8


class StreamType(enum.IntEnum):
    """``proxy_stream_type_t`` (ABI >= 0.2.0)."""

    HTTP_REQUEST = 0
    HTTP_RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class Action(enum.IntEnum):
    """``proxy_action_t`` as the spec names it."""

    CONTINUE = 0
    PAUSE = 1


class FilterHeadersStatus(enum.IntEnum):
    """How Envoy reads the i32 a headers callback returns (docs/abi-notes.md §4.4)."""

    CONTINUE = 0
    STOP_ITERATION = 1
    CONTINUE_AND_END_STREAM = 2
    STOP_ALL_ITERATION_AND_BUFFER = 3
    STOP_ALL_ITERATION_AND_WATERMARK = 4


class FilterDataStatus(enum.IntEnum):
    """How Envoy reads the i32 a body callback returns."""

    CONTINUE = 0
    STOP_ITERATION_AND_BUFFER = 1
    STOP_ITERATION_AND_WATERMARK = 2
    STOP_ITERATION_NO_BUFFER = 3


class FilterTrailersStatus(enum.IntEnum):
    """How Envoy reads the i32 a trailers callback returns."""

    CONTINUE = 0
    STOP_ITERATION = 1


class Phase(enum.Enum):
    """Where one direction of a stream stopped iterating (the callback that returned a stop)."""

    HEADERS = "headers"
    BODY = "body"
    TRAILERS = "trailers"


class MetricType(enum.IntEnum):
    """``proxy_metric_type_t``."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class PeerType(enum.IntEnum):
    """``proxy_peer_type_t`` (close type of a network connection)."""

    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class AbiVersion(str, enum.Enum):
    """ABI versions this host implements, keyed by their marker export."""

    V0_1_0 = "0.1.0"
    V0_2_0 = "0.2.0"
    V0_2_1 = "0.2.1"
    #: Higress's ABI: 0.2.x plus its Redis and upstream host functions (not Envoy's)
    V0_2_100 = "0.2.100"

    @property
    def marker(self) -> str:
        return "proxy_abi_version_" + self.value.replace(".", "_")

    @property
    def envoy_loads(self) -> bool:
        """Whether Envoy (1.40) loads modules of this ABI (0.2.100 is Higress's own)."""
        return self is not AbiVersion.V0_2_100

    @classmethod
    def from_marker(cls, name: str) -> AbiVersion | None:
        for version in cls:
            if version.marker == name:
                return version
        return None


# The statuses the per-request paths return, as module globals: reading ``Status.OK`` goes
# through EnumType's attribute hook (~0.1 µs a lookup on Python 3.11), a global is a dict
# hit.  The same member objects.
OK, NOT_FOUND, BAD_ARGUMENT = Status.OK, Status.NOT_FOUND, Status.BAD_ARGUMENT
