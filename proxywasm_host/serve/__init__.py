"""``proxywasm-host serve``: a real local HTTP proxy that runs every request through a filter."""
