"""Hostcalls for shared data, shared queues and metrics."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from proxywasm_host.core.hostcalls.callouts import CalloutCalls
from proxywasm_host.core.spec import MASK32, hostcall
from proxywasm_host.core.state import Metric, SharedQueue
from proxywasm_host.core.types import BAD_ARGUMENT as _BAD_ARGUMENT
from proxywasm_host.core.types import NOT_FOUND as _NOT_FOUND
from proxywasm_host.core.types import OK as _OK
from proxywasm_host.core.types import (
    MetricType,
    Status,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class SharedCalls(CalloutCalls):
    """Shared data, shared queues and metrics."""


    # -- shared data ----------------------------------------------------------------------
    @hostcall("proxy_get_shared_data")
    def proxy_get_shared_data(self, key_ptr: int, key_len: int, ret_ptr_ptr: int, ret_size_ptr: int, ret_cas_ptr: int) -> int:
        key = self.read(key_ptr, key_len)
        entry = self.shared.data.get(self.vm_id, {}).get(key)
        if entry is None:
            return _NOT_FOUND
        value, cas = entry
        status = self.return_bytes(ret_ptr_ptr, ret_size_ptr, value)
        self.write_u32(ret_cas_ptr, cas)
        return status

    @hostcall("proxy_set_shared_data")
    def proxy_set_shared_data(self, key_ptr: int, key_len: int, val_ptr: int, val_len: int, cas: int) -> int:
        key = self.read(key_ptr, key_len)
        value = self.read(val_ptr, val_len)
        space = self.shared.data.setdefault(self.vm_id, {})
        entry = space.get(key)
        if entry is not None and cas != 0 and cas != entry[1]:
            return Status.CAS_MISMATCH
        new_cas = self.shared.next_cas
        self.shared.next_cas = new_cas + 1 if new_cas + 1 <= MASK32 else 1
        space[key] = (value, new_cas)
        return _OK

    # -- shared queues --------------------------------------------------------------------
    @hostcall("proxy_register_shared_queue")
    def proxy_register_shared_queue(self, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        name = self.read(name_ptr, name_len)
        key = (self.vm_id, name)
        token = self.shared.queue_tokens.get(key)
        root = self.active.root
        owner = (self, root.id if root is not None else 0)
        if token is None:
            token = self.shared.next_queue_token
            self.shared.next_queue_token += 1
            self.shared.queue_tokens[key] = token
            self.shared.queues[token] = SharedQueue(self.vm_id, name, owner)
        else:
            self.shared.queues[token].owner = owner
        self.write_u32(ret_id_ptr, token)
        return _OK

    @hostcall("proxy_resolve_shared_queue")
    def proxy_resolve_shared_queue(self, vm_id_ptr: int, vm_id_len: int, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        vm_id = self.read(vm_id_ptr, vm_id_len).decode("utf-8", "surrogateescape") or self.vm_id
        name = self.read(name_ptr, name_len)
        token = self.shared.queue_tokens.get((vm_id, name))
        if token is None:
            return _NOT_FOUND
        self.write_u32(ret_id_ptr, token)
        return _OK

    @hostcall("proxy_enqueue_shared_queue")
    def proxy_enqueue_shared_queue(self, token: int, val_ptr: int, val_len: int) -> int:
        value = self.read(val_ptr, val_len)
        queue = self.shared.queues.get(token)
        if queue is None:
            return _NOT_FOUND
        queue.items.append(value)
        owner_host, root_id = queue.owner
        owner_host.posted_queue_ready.append((root_id, token))
        if owner_host is not self and owner_host.wake is not None:
            # another VM (e.g. a VM-level service) owns the queue: Envoy posts the
            # notification to it; here it runs once this guest call has returned
            self.deferred.append(owner_host.wake)
        return _OK

    @hostcall("proxy_dequeue_shared_queue")
    def proxy_dequeue_shared_queue(self, token: int, ret_ptr_ptr: int, ret_size_ptr: int) -> int:
        queue = self.shared.queues.get(token)
        if queue is None:
            return _NOT_FOUND
        if not queue.items:
            return Status.EMPTY
        status = self.return_bytes(ret_ptr_ptr, ret_size_ptr, queue.items[0])
        queue.items.pop(0)
        return status

    # -- metrics --------------------------------------------------------------------------
    @hostcall("proxy_define_metric")
    def proxy_define_metric(self, metric_type: int, name_ptr: int, name_len: int, ret_id_ptr: int) -> int:
        if metric_type > MetricType.HISTOGRAM:
            return _BAD_ARGUMENT
        name = self.read(name_ptr, name_len).decode("utf-8", "surrogateescape")
        mtype = MetricType(metric_type)
        metric_id = self._metric_ids[mtype]
        self._metric_ids[mtype] = metric_id + 4
        existing = self.metrics_by_name.get((mtype, name))
        # Defining a name again gives a new id bound to the same stat (docs/abi-notes.md §5.8).
        self.metrics[metric_id] = self.metrics[existing] if existing is not None else Metric(name, mtype)
        self.metrics_by_name.setdefault((mtype, name), metric_id)
        self.write_u32(ret_id_ptr, metric_id)
        return _OK

    @hostcall("proxy_increment_metric", signed=(1,))
    def proxy_increment_metric(self, metric_id: int, delta: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.COUNTER:
            if delta <= 0:
                return _BAD_ARGUMENT
            metric.value += delta
        elif metric.type == MetricType.GAUGE:
            metric.value += delta
        else:
            return _BAD_ARGUMENT
        return _OK

    @hostcall("proxy_record_metric")
    def proxy_record_metric(self, metric_id: int, value: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.COUNTER:
            metric.value += value  # Envoy adds (spec says "sets")
        elif metric.type == MetricType.GAUGE:
            metric.value = value
        else:
            metric.samples.append(value)
        return _OK

    @hostcall("proxy_get_metric")
    def proxy_get_metric(self, metric_id: int, ret_ptr: int) -> int:
        metric = self.metrics.get(metric_id)
        if metric is None:
            return _NOT_FOUND
        if metric.type == MetricType.HISTOGRAM:
            return _BAD_ARGUMENT
        self.write_u64(ret_ptr, metric.value)
        return _OK
