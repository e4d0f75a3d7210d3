"""WASI preview1 as Envoy provides it to proxy-wasm modules (docs/abi-notes.md §9)."""

from __future__ import annotations

import struct

from mypy_extensions import mypyc_attr

from proxywasm_host.core.guest import GuestMemoryError
from proxywasm_host.core.hostcalls.base import AbiHostBase
from proxywasm_host.core.observer import LogEntry
from proxywasm_host.core.spec import (
    EBADF,
    EINVAL,
    ENOENT,
    ENOSYS,
    ENOTDIR,
    ENOTSUP,
    ESUCCESS,
    RANDOM_GET_LIMIT,
    hostcall,
)
from proxywasm_host.core.types import (
    LogLevel,
)


@mypyc_attr(allow_interpreted_subclasses=True)
class WasiCalls(AbiHostBase):
    """The WASI preview1 imports."""


    # -- WASI preview1 (docs/abi-notes.md §9) ---------------------------------------------
    def _iovecs(self, iovs: int, iovs_len: int) -> bytes:
        mem = self.guest.memory()
        if iovs + 8 * iovs_len > len(mem):
            raise GuestMemoryError  # checked up front: a huge count must not loop for ages
        chunks = []
        for i in range(iovs_len):
            ptr, size = struct.unpack_from("<II", mem, iovs + 8 * i)
            chunks.append(self.read(ptr, size))
        return b"".join(chunks)

    def _write_fd(self, fd: int, data: bytes) -> None:
        text = data[:-1] if data.endswith(b"\n") else data
        if text:
            level = LogLevel.INFO if fd == 1 else LogLevel.ERROR
            self.emit_log(level, text, "stdout" if fd == 1 else "stderr")

    @hostcall("fd_write")
    def fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        data = self._iovecs(iovs, iovs_len)
        self._write_fd(fd, data)
        self.write_u32(nwritten_ptr, len(data))
        return ESUCCESS

    @hostcall("fd_pwrite")
    def fd_pwrite(self, fd: int, iovs: int, iovs_len: int, offset: int, nwritten_ptr: int) -> int:
        result = self.fd_write(fd, iovs, iovs_len, nwritten_ptr)
        assert result is not None  # fd_write always answers an errno
        return result

    @hostcall("fd_read")
    def fd_read(self, fd: int, iovs: int, iovs_len: int, nread_ptr: int) -> int:
        return ENOSYS

    @hostcall("fd_seek", signed=(1,))
    def fd_seek(self, fd: int, offset: int, whence: int, ret_ptr: int) -> int:
        self.host_notes("wasi_unstable fd_seek")
        return ESUCCESS

    @hostcall("fd_close")
    def fd_close(self, fd: int) -> int:
        self.host_notes("wasi_unstable fd_close")
        return ESUCCESS

    def host_notes(self, text: str) -> None:
        """cpp-host logs these calls at error level on the host's own logger."""
        root = self.active.root
        self.logs.append(LogEntry(LogLevel.ERROR, text, self.active.id, "host", root.id if root else 0))

    @hostcall("fd_fdstat_get")
    def fd_fdstat_get(self, fd: int, buf: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.write(buf, struct.pack("<QQQ", 0, 64, 0))
        return ESUCCESS

    @hostcall("fd_fdstat_set_flags")
    def fd_fdstat_set_flags(self, fd: int, flags: int) -> int:
        return ENOSYS

    @hostcall("fd_fdstat_set_rights")
    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_prestat_get")
    def fd_prestat_get(self, fd: int, buf: int) -> int:
        return EBADF

    @hostcall("fd_prestat_dir_name")
    def fd_prestat_dir_name(self, fd: int, path: int, path_len: int) -> int:
        return ENOSYS

    @hostcall("fd_filestat_get")
    def fd_filestat_get(self, fd: int, buf: int) -> int:
        return EBADF

    @hostcall("fd_advise")
    def fd_advise(self, fd: int, offset: int, length: int, advice: int) -> int:
        return ESUCCESS

    @hostcall("fd_allocate")
    def fd_allocate(self, fd: int, offset: int, length: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_datasync")
    def fd_datasync(self, fd: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_sync")
    def fd_sync(self, fd: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_filestat_set_size")
    def fd_filestat_set_size(self, fd: int, size: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_filestat_set_times")
    def fd_filestat_set_times(self, fd: int, atim: int, mtim: int, flags: int) -> int:
        return ESUCCESS if fd in (1, 2) else EBADF

    @hostcall("fd_pread")
    def fd_pread(self, fd: int, iovs: int, iovs_len: int, offset: int, nread_ptr: int) -> int:
        return ENOSYS

    @hostcall("fd_readdir")
    def fd_readdir(self, fd: int, buf: int, buf_len: int, cookie: int, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, 0)
        return ENOTDIR

    @hostcall("fd_renumber")
    def fd_renumber(self, fd: int, to: int) -> int:
        return ENOTSUP if fd in (1, 2) and to in (1, 2) else EBADF

    @hostcall("fd_tell")
    def fd_tell(self, fd: int, ret_ptr: int) -> int:
        if fd not in (1, 2):
            return EBADF
        self.write_u64(ret_ptr, 0)
        return ESUCCESS

    @hostcall("path_open")
    def path_open(self, fd: int, dirflags: int, path: int, path_len: int, oflags: int, base: int, inheriting: int, fdflags: int, ret_fd: int) -> int:
        return ENOENT

    @hostcall("path_filestat_get")
    def path_filestat_get(self, fd: int, flags: int, path: int, path_len: int, buf: int) -> int:
        return ENOTSUP

    @hostcall("path_create_directory")
    def path_create_directory(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_remove_directory")
    def path_remove_directory(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_unlink_file")
    def path_unlink_file(self, fd: int, path: int, path_len: int) -> int:
        return ENOTSUP

    @hostcall("path_filestat_set_times")
    def path_filestat_set_times(self, fd: int, flags: int, path: int, path_len: int, atim: int, mtim: int, fst: int) -> int:
        return ENOTSUP

    @hostcall("path_link")
    def path_link(self, a: int, b: int, c: int, d: int, e: int, f: int) -> int:
        return ENOTSUP

    @hostcall("path_readlink")
    def path_readlink(self, fd: int, path: int, path_len: int, buf: int, buf_len: int, ret_ptr: int) -> int:
        self.write_u32(ret_ptr, 0)
        return ENOTSUP

    @hostcall("path_rename")
    def path_rename(self, a: int, b: int, c: int, d: int, e: int, f: int) -> int:
        return ENOTSUP

    @hostcall("path_symlink")
    def path_symlink(self, a: int, b: int, c: int, d: int) -> int:
        return ENOTSUP

    @hostcall("sock_accept")
    def sock_accept(self, fd: int, flags: int, ret_ptr: int) -> int:
        self.write_u64(ret_ptr, 0)
        return ENOTSUP

    @hostcall("sock_recv")
    def sock_recv(self, fd: int, iovs: int, iovs_len: int, flags: int, ret_size: int, ret_flags: int) -> int:
        self.write_u32(ret_size, 0)
        self.write(ret_flags, b"\0\0")
        return ENOTSUP

    @hostcall("sock_send")
    def sock_send(self, fd: int, iovs: int, iovs_len: int, flags: int, ret_size: int) -> int:
        self.write_u32(ret_size, 0)
        return ENOTSUP

    @hostcall("sock_shutdown")
    def sock_shutdown(self, fd: int, how: int) -> int:
        return ENOTSUP

    def _environ(self) -> list[bytes]:
        return [f"{k}={v}".encode() + b"\0" for k, v in self.environment.items()]

    @hostcall("environ_sizes_get")
    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> int:
        env = self._environ()
        self.write_u32_pair(count_ptr, len(env), size_ptr, sum(len(e) for e in env))
        return ESUCCESS

    @hostcall("environ_get")
    def environ_get(self, ptrs: int, buf: int) -> int:
        for i, entry in enumerate(self._environ()):
            self.write_u32(ptrs + 4 * i, buf)
            self.write(buf, entry)
            buf += len(entry)
        return ESUCCESS

    @hostcall("args_sizes_get")
    def args_sizes_get(self, argc_ptr: int, size_ptr: int) -> int:
        self.write_u32_pair(argc_ptr, 0, size_ptr, 0)
        return ESUCCESS

    @hostcall("args_get")
    def args_get(self, argv: int, buf: int) -> int:
        return ESUCCESS

    @hostcall("clock_time_get")
    def clock_time_get(self, clock_id: int, precision: int, ret_ptr: int) -> int:
        if clock_id == 0:
            self.write_u64(ret_ptr, self.clock.wall_ns)
        elif clock_id == 1:
            self.write_u64(ret_ptr, self.clock.monotonic_ns)
        else:
            return ENOTSUP
        return ESUCCESS

    @hostcall("clock_res_get")
    def clock_res_get(self, clock_id: int, ret_ptr: int) -> int:
        if clock_id not in (0, 1):
            return ENOTSUP
        self.write_u64(ret_ptr, 1)
        return ESUCCESS

    @hostcall("random_get")
    def random_get(self, buf: int, size: int) -> int:
        if size > RANDOM_GET_LIMIT:
            return EINVAL
        if size:
            self.write(buf, self.random.randbytes(size))
        return ESUCCESS

    @hostcall("proc_exit")
    def proc_exit(self, code: int) -> None:
        self.host_notes("wasi_unstable proc_exit")

    @hostcall("sched_yield")
    def sched_yield(self) -> int:
        return ESUCCESS

    @hostcall("poll_oneoff")
    def poll_oneoff(self, in_ptr: int, out_ptr: int, nsubs: int, nevents_ptr: int) -> int:
        self.write_u32(nevents_ptr, 0)
        return ESUCCESS
