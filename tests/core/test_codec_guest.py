"""What the guest SDK reads is what we wrote, and what it writes is what we read:
Hypothesis drives header lists through the real Rust SDK tutorial filter, which logs every
header it decoded and echoes :authority into a header it encodes."""

from __future__ import annotations

from conftest import RUST_TARGETS, fixture_wasm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxywasm_host import CompiledModule, Host

MODULE = CompiledModule.load(fixture_wasm(f"hello_world-{RUST_TARGETS[0]}"))

# The Rust SDK decodes header maps as UTF-8 Strings, so keys and values are text here;
# header names are lower-case (Envoy lower-cases them before a filter sees them).
names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: not c.isupper() and c != ":"), min_size=1, max_size=20)
values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)
header_lists = st.lists(st.tuples(names, values), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_lists, values)
def test_sdk_reads_exactly_what_the_host_wrote(headers: list[tuple[str, str]], authority: str) -> None:
    plugin = Host().load_plugin(MODULE)
    stream = plugin.http_stream()
    sent = [(":authority", authority), *headers]
    stream.send_request_headers(sent, end_of_stream=True)
    assert plugin.log_messages("trace") == [f"#2 -> {k}: {v}" for k, v in sent]
    # and the value the SDK encoded came back intact
    assert stream.request_headers.items()[-1] == ("x-hello", f"Hello world from {authority}")
    assert stream.request_headers.items()[:-1] == sent
