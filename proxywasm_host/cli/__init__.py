"""The ``proxywasm-host`` command line."""

from proxywasm_host.cli.main import main

__all__ = ["main"]
