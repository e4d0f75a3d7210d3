"""The sans-IO ABI host: ABI state, codec, contexts, hostcalls, the VM protocol and the stream.

Nothing in this package imports wasmtime, asyncio, pytest or any network library; it talks
to a guest only through :mod:`proxywasm_host.core.guest`.
"""
