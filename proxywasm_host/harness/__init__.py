"""The driver: load a filter into a :class:`Host`, drive HTTP streams through it, inspect the result."""

from proxywasm_host.harness.host import Host
from proxywasm_host.harness.plugin import Plugin
from proxywasm_host.harness.stream import HttpStream
from proxywasm_host.harness.tcp import TcpConnection, TcpResult, TcpScenario

__all__ = ["Host", "HttpStream", "Plugin", "TcpConnection", "TcpResult", "TcpScenario"]
