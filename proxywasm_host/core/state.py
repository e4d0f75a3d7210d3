"""State shared by the VMs of one Host: the virtual clock, shared data, shared queues and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxywasm_host.core.types import (
    MetricType,
)


@dataclass
class Clock:
    """Virtual time shared by ticks, proxy_get_current_time_nanoseconds and WASI clocks."""

    wall_ns: int = 1_700_000_000_000_000_000
    #: like a machine's uptime; never 0 (Go's runtime aborts when its monotonic clock reads 0)
    monotonic_ns: int = 1_000_000_000_000

    def advance_ns(self, delta: int) -> None:
        if delta < 0:
            raise ValueError("time only moves forward")
        self.wall_ns += delta
        self.monotonic_ns += delta


@dataclass
class Metric:
    name: str
    type: MetricType
    value: int = 0
    samples: list[int] = field(default_factory=list)


class SharedState:
    """Shared data and queues, scoped by vm_id, shared by every VM of one Host."""

    def __init__(self) -> None:
        self.data: dict[str, dict[bytes, tuple[bytes, int]]] = {}
        self.next_cas = 1
        self.queues: dict[int, SharedQueue] = {}
        self.queue_tokens: dict[tuple[str, bytes], int] = {}
        self.next_queue_token = 1


@dataclass
class SharedQueue:
    vm_id: str
    name: bytes
    owner: Any  # (AbiHost, root context id) of the latest registrant
    items: list[bytes] = field(default_factory=list)
