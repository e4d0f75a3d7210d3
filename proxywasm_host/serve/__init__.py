"""``proxywasm-host serve``: a real local HTTP proxy that runs every request through a filter.

config (ServeConfig, limits) · echo (the built-in upstream) · exchange (one request) · legs (its
upstream leg) · server (the filter server and the entry point :func:`serve`).
"""
