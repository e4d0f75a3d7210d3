"""Calling into the guest the way cpp-host/Envoy does: context bookkeeping around every
callback, deferred actions, trap handling, plugin start-up and ticks.

Sans-IO: the guest is reached through the :class:`GuestRuntime` protocol the
runtime layer implements; nothing here imports wasmtime.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol, cast

from proxywasm_host.core.callouts import GrpcCall, HttpCallout
from proxywasm_host.core.context import Context, PluginConfig, RootContext
from proxywasm_host.core.guest import GuestRuntime, WasmTrap
from proxywasm_host.core.headers import HeaderMap
from proxywasm_host.core.higress import RedisCall
from proxywasm_host.core.hostcalls import AbiHost
from proxywasm_host.core.observer import LogEntry
from proxywasm_host.core.spec import ABI_TABLE
from proxywasm_host.core.types import AbiVersion, LogLevel, MapType
from proxywasm_host.errors import (
    FilterFailed,
    FilterTrap,
    HarnessUsageError,
    UnexpectedHostcall,
)


def _panic_message(logs: list[LogEntry], since: int) -> str | None:
    """The message a guest logged right before trapping, if any.

    Rust's panic hook logs one CRITICAL line; Go's runtime writes its panic to stderr in
    many small fd_write calls (each one a log record, as in Envoy), so those are joined.
    """
    recent = logs[since:]
    for entry in reversed(recent):
        if entry.level >= LogLevel.CRITICAL and entry.source == "proxy_log":
            return entry.message
    stderr = "".join(e.message for e in recent if e.source == "stderr")
    for line in stderr.replace("\t", "\n").splitlines():
        if line.startswith(("panic:", "fatal error:")) or "panicked at" in line:
            return line.split("goroutine ")[0].strip()
    for entry in reversed(recent):
        if "panic" in entry.message:
            return entry.message
    return None


class CallObserver(Protocol):
    """Told of every export a :class:`Vm` calls (callbacks, start functions), in order."""

    def enter(self, vm: Vm, context: Context, name: str, args: tuple[int, ...]) -> None:
        """Right before the guest runs ``name``."""

    def exit(self, vm: Vm, context: Context, name: str) -> None:
        """Right after it returned or trapped."""


class Vm:
    """One instance of a module: its ABI state plus the way to call it."""

    def __init__(self, host: AbiHost, runtime: GuestRuntime, *, call_observer: CallObserver | None = None) -> None:
        self.host = host
        self.runtime = runtime
        self.failed: FilterTrap | None = None
        self.roots: list[RootContext] = []
        host.delivery = self
        #: told of every callback this VM runs (the differential runner records them)
        self.call_observer: CallObserver | None = call_observer
        host.wake = self._wake
        self._depth = 0
        #: export name -> runtime.export(name), asked once per name
        self._exports: dict[str, Callable[..., int | None] | None] = {}
        #: raise FilterTrap to the test (True) or only apply the failure policy (False)
        self.raise_on_trap = True

    @property
    def abi_version(self) -> AbiVersion:
        return self.host.abi_version

    # -- the one way into the guest ------------------------------------------------------
    def call(self, context: Context, name: str, *args: int, default: int = 0) -> int:
        """Run export ``name`` with ``context`` current; return its i32 result (or ``default``)."""
        return self.call_with(context, name, args, default)

    def call_with(self, context: Context, name: str, args: tuple[int, ...], default: int = 0) -> int:
        """:meth:`call` with the arguments as one tuple (the stream's callbacks build theirs
        once; passing them on as ``*args`` would pack them again at every level)."""
        if self.failed is not None:
            raise HarnessUsageError(
                f"cannot call {name}: this VM failed earlier ({self.failed.callback} trapped). "
                "Envoy sends no more callbacks into a failed VM; load a fresh plugin to go on."
            )
        try:
            fn = self._exports[name]
        except KeyError:
            fn = self._exports[name] = self.runtime.export(name)
        if fn is None:
            return default
        host = self.host
        saved_current = host.current
        saved_effective = host.effective
        host.current = context
        host.effective = None
        log_mark = len(host.logs)
        self._depth += 1
        call_observer = self.call_observer
        if call_observer is not None:
            call_observer.enter(self, context, name, args)
        try:
            result = fn(*args)
        except WasmTrap as trap:
            self.failed = FilterTrap(name, context.id, str(trap), _panic_message(host.logs, log_mark))
            host.deferred.clear()
            raise self.failed from None
        finally:
            self._depth -= 1
            host.current = saved_current
            host.effective = saved_effective
            if call_observer is not None:
                call_observer.exit(self, context, name)
        observer = host._observer
        if observer is not None and observer.violations and self._depth == 0:
            found, observer.violations = observer.violations, []
            raise UnexpectedHostcall(
                f"{name} (context {context.id}) made hostcalls the test did not allow: " + "; ".join(found)
            )
        return default if result is None else result & 0xFFFFFFFF

    def exported(self, name: str) -> bool:
        """Whether the module exports ``name``: what :meth:`call_with` found when it last
        called it (no crossing into the runtime after the first time)."""
        try:
            return self._exports[name] is not None
        except KeyError:
            return self.runtime.has_export(name)

    def flush(self) -> None:
        """Run what Envoy defers until the guest call returns, then posted notifications."""
        host = self.host
        while host.deferred or host.posted_queue_ready:
            while host.deferred:
                host.deferred.pop(0)()
            if self.failed is not None:
                host.posted_queue_ready.clear()  # a failed VM gets no more callbacks
            while host.posted_queue_ready:
                root_id, token = host.posted_queue_ready.pop(0)
                root = host.contexts.get(root_id)
                if isinstance(root, RootContext):
                    self.call(root, "proxy_on_queue_ready", root_id, token)

    def _wake(self) -> None:
        """Notifications another VM posted to this one (a shared queue this VM owns)."""
        if self._depth == 0 and self.failed is None:
            self.flush()

    # -- VM start and plugin start (docs/abi-notes.md §2.5, §7.1) ------------------------
    def start_vm(self) -> None:
        """Run the module's start functions, as cpp-host does for every VM instance."""
        vm_ctx = self.host.vm_context
        if self.runtime.has_export("_initialize"):
            self.call(vm_ctx, "_initialize")
            if self.runtime.has_export("main"):
                self.call(vm_ctx, "main", 0, 0)
            elif self.runtime.has_export("__main_void"):
                self.call(vm_ctx, "__main_void")
        elif self.runtime.has_export("_start"):
            self.call(vm_ctx, "_start")

    def start_plugin(self, plugin: PluginConfig) -> RootContext:
        """Create a root context and run on_context_create → on_vm_start → on_configure."""
        host = self.host
        root = host.new_root_context(plugin)
        host.plugin_in_flight = root
        try:
            self.call(root, "proxy_on_context_create", root.id, 0)
            root.created = True
            if not self.call(root, "proxy_on_vm_start", root.id, len(plugin.vm_configuration), default=1):
                raise FilterFailed(f"plugin {plugin.root_id!r}: proxy_on_vm_start returned false (Envoy: StartFailed)")
            if not self.call(root, "proxy_on_configure", root.id, len(plugin.configuration), default=1):
                raise FilterFailed(
                    f"plugin {plugin.root_id!r}: proxy_on_configure returned false (Envoy: ConfigureFailed, "
                    "the configuration is rejected)"
                )
        finally:
            host.plugin_in_flight = None
        self.flush()
        self.roots.append(root)
        return root

    def shutdown_plugin(self, root: RootContext) -> bool:
        """Envoy's root shutdown: on_done; true → on_delete now, false → wait for proxy_done."""
        if self.failed is not None or root.deleted:
            return True
        if self.call(root, "proxy_on_done", root.id, default=1):
            self.root_done(root)
            self.flush()
            return True
        root.pending_done = True
        self.flush()
        return False

    def root_done(self, root: RootContext) -> None:
        if root.deleted:
            return
        root.deleted = True
        root.tick_period_ms = 0
        root.next_tick_ns = None
        if self.failed is None:
            self.call(root, "proxy_on_delete", root.id)
        self.host.forget(root)
        # Envoy cancels what the root owned: its callouts and gRPC calls/streams.
        for token, callout in list(self.host.http_callouts.items()):
            if callout.root_context_id == root.id:
                callout.state = "cancelled"
                del self.host.http_callouts[token]
        for token, call in list(self.host.grpc_calls.items()):
            if call.root_context_id == root.id:
                call.state = "cancelled"
                del self.host.grpc_calls[token]
        for token, redis in list(self.host.redis_calls.items()):
            if redis.root_context_id == root.id:
                redis.state = "cancelled"
                del self.host.redis_calls[token]

    def dns_answers(self, root: RootContext, token: int, answers: list[tuple[str, int]]) -> None:
        if root.deleted or self.failed is not None:
            return
        data = b""
        if answers:
            data = struct.pack(f"<I{len(answers)}I", len(answers), *[ttl for _, ttl in answers])
            data += b"".join(addr.encode() + b"\0" for addr, _ in answers)
        self.host.call_data = data
        try:
            self.call(root, "envoy_on_resolve_dns", root.id, token, len(data))
        finally:
            self.host.call_data = None

    # -- callouts ---------------------------------------------------------------------------
    def redis_response(self, call: RedisCall, status: int, reply: bytes) -> None:
        """proxy_on_redis_call_response(root, token, status, size) (Higress); the reply is
        buffer type 9 during the call only."""
        root = self._root(call.root_context_id)
        self.host.redis_calls.pop(call.token, None)
        root.redis_reply = reply
        try:
            self.call(root, "proxy_on_redis_call_response", root.id, call.token, status & 0xFFFFFFFF, len(reply))
        finally:
            root.redis_reply = None
        self.flush()

    def _root(self, root_id: int) -> RootContext:
        root = self.host.contexts.get(root_id)
        if not isinstance(root, RootContext) or root.deleted:
            raise HarnessUsageError(f"the root context {root_id} that owns this callout is gone")
        return root

    def http_response(
        self,
        callout: HttpCallout,
        headers: list[tuple[str, str]] | None,
        body: bytes,
        trailers: list[tuple[str, str]],
        status: tuple[int, bytes] | None,
    ) -> None:
        """proxy_on_http_call_response(root, token, headers, body size, trailers); maps 6/7 and
        buffer 4 exist only during the call (docs/abi-notes.md §7.7)."""
        root = self._root(callout.root_context_id)
        self.host.http_callouts.pop(callout.token, None)
        root.http_call_response = (HeaderMap(headers or []), HeaderMap(trailers))
        root.http_call_body = body
        if status is not None:
            root.status_code, root.status_message = status
        try:
            self.call(root, "proxy_on_http_call_response", root.id, callout.token,
                      len(headers or []), len(body), len(trailers))
        finally:
            root.http_call_response = None
            root.http_call_body = None
            root.status_code, root.status_message = 0, b""
        self.flush()

    def grpc_event(self, call: GrpcCall, kind: str, payload: object) -> None:
        root = self._root(call.root_context_id)
        try:
            if kind == "initial_metadata" or kind == "trailing_metadata":
                pairs = cast("list[tuple[str, str]]", payload)
                map_type = MapType.GRPC_CALL_INITIAL_METADATA if kind == "initial_metadata" else MapType.GRPC_CALL_TRAILING_METADATA
                root.grpc_metadata = (map_type, HeaderMap(pairs))
                self.call(root, f"proxy_on_grpc_receive_{kind}", root.id, call.token, len(pairs))
            elif kind == "receive":
                message_bytes = cast(bytes, payload)
                root.grpc_message = message_bytes
                self.call(root, "proxy_on_grpc_receive", root.id, call.token, len(message_bytes))
            else:
                code, message = cast("tuple[int, bytes]", payload)
                root.status_code, root.status_message = code, message
                self.call(root, "proxy_on_grpc_close", root.id, call.token, code)
        finally:
            root.grpc_metadata = None
            root.grpc_message = None
            root.status_code, root.status_message = 0, b""
        if call.state == "closed":
            self.host.grpc_calls.pop(call.token, None)
        self.flush()

    # -- timers -----------------------------------------------------------------------------
    def next_tick(self) -> tuple[int, RootContext] | None:
        due = [(r.next_tick_ns, r) for r in self.roots if r.next_tick_ns is not None and not r.deleted]
        if not due:
            return None
        return min(due, key=lambda item: (item[0], item[1].id))

    def fire_tick(self, root: RootContext) -> None:
        assert root.next_tick_ns is not None
        root.next_tick_ns += root.tick_period_ms * 1_000_000
        self.call(root, "proxy_on_tick", root.id)
        self.flush()


def guest_exports(abi: AbiVersion) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Every export the host may call for ``abi`` with its expected wasm type (the ABI table)."""
    return dict(ABI_TABLE.exports[abi])
