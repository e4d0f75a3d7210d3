"""proxywasm_host.strategies: what they generate is what Envoy accepts, delivered as Envoy
delivers it, and they compose with a user's own strategies."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxywasm_host import strategies as pst
from proxywasm_host.http.profiles import get_profile

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]+$")


@FAST
@given(pst.exchanges())
def test_delivered_request_is_what_envoy_gives_a_filter(exchange: pst.Exchange) -> None:
    request, response = get_profile(exchange.profile).apply(exchange.request, exchange.response)
    names = [k for k, _ in request.headers]
    pseudo = [n for n in names if n.startswith(":")]
    assert sorted(pseudo) == [":authority", ":method", ":path", ":scheme"]
    assert names[: len(pseudo)] == pseudo  # pseudo-headers first
    for name, value in request.headers:
        assert name.startswith(":") or TOKEN.match(name), name  # lower-case tokens
        assert not any(c in value for c in "\r\n\0") and value == value.strip(" \t")
    if exchange.protocol == pst.HTTP1:
        assert request.trailers is None and "host" not in names
    assert all(k == k.lower() for k, _ in response.headers)
    assert response.status >= 200


@FAST
@given(pst.http_requests(protocol=pst.HTTP2))
def test_http2_requests_have_lower_case_names_and_pseudo_headers(request: pst.HttpRequest) -> None:
    names = [k for k, _ in request.headers]
    assert names[:4] == [":method", ":scheme", ":authority", ":path"]
    assert all(k == k.lower() for k in names)


@FAST
@given(pst.body_chunks(pst.bodies()))
def test_chunks_are_non_empty_pieces(chunks: tuple[bytes, ...]) -> None:
    assert all(chunks)


def test_body_chunks_rejoin_to_the_body() -> None:
    @FAST
    @given(st.data())
    def check(data: st.DataObject) -> None:
        body = data.draw(st.binary(min_size=1, max_size=50))
        chunks = data.draw(pst.body_chunks(st.just(body)))
        assert b"".join(chunks) == body

    check()


def seen(strategy: st.SearchStrategy[object], n: int, **checks: object) -> dict[str, bool]:
    """Which of the predicates ``checks`` some of ``n`` generated examples met (no shrinking)."""
    found = dict.fromkeys(checks, False)

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(example: object) -> None:
        for name, pred in checks.items():
            found[name] = found[name] or bool(pred(example))  # type: ignore[operator]

    run()
    return found


def test_generates_duplicates_casing_lists_and_trailers() -> None:
    found = seen(
        pst.exchanges(), 300,
        duplicates=lambda e: len({k.lower() for k, _ in e.request.headers}) < len(e.request.headers),
        casing=lambda e: any(k != k.lower() for k, _ in e.request.headers),
        list_values=lambda e: any("," in v for _, v in e.request.headers[3:]),
        trailers=lambda e: e.request.trailers is not None and e.protocol == pst.HTTP2,
        chunks=lambda e: len(e.request.body_chunks) > 1,
        http1=lambda e: e.protocol == pst.HTTP1,
        http2=lambda e: e.protocol == pst.HTTP2,
    )
    assert all(found.values()), found


def test_hostile_adds_non_utf8_bytes_and_huge_values() -> None:
    found = seen(
        pst.exchanges(hostile=True), 300,
        non_utf8=lambda e: any(any(0xDC80 <= ord(c) <= 0xDCFF for c in v) for _, v in e.request.headers),
        huge=lambda e: any(len(v) > 1024 for _, v in e.request.headers),
        many=lambda e: len(e.request.headers) > 20,
    )
    assert all(found.values()), found

    @FAST
    @given(pst.header_values())
    def never_hostile(v: str) -> None:
        assert all(0x20 <= ord(c) < 0x7F or c == "\t" for c in v)

    never_hostile()


def test_composes_with_user_strategies() -> None:
    mine = pst.header_lists(names=st.just("x-mine"), values=st.sampled_from(["1", "2"]), min_size=1, max_size=2)

    @FAST
    @given(pst.exchanges(requests=pst.http_requests(protocol=pst.HTTP2, headers=mine, with_trailers=False)))
    def check(exchange: pst.Exchange) -> None:
        regular = [h for h in exchange.request.headers if not h[0].startswith(":") and h[0] != "content-length"]
        assert regular and all(h[0] == "x-mine" and h[1] in ("1", "2") for h in regular)
        assert exchange.request.trailers is None

    check()


def test_extra_header_names_are_generated_often() -> None:
    hits = []

    @settings(max_examples=100, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(pst.http_requests(extra_header_names=["x-learned"]))
    def count(request: pst.HttpRequest) -> None:
        hits.append(any(k.lower() == "x-learned" for k, _ in request.headers))

    count()
    assert sum(hits) >= 20


@FAST
@given(pst.exchanges())
def test_to_python_round_trips(ex: pst.Exchange) -> None:
    from proxywasm_host import HttpRequest, HttpResponse

    request, response, _profile = eval(
        "(" + ex.to_python().replace("profile=", "") + ")", {"HttpRequest": HttpRequest, "HttpResponse": HttpResponse})
    assert (request, response) == (ex.request, ex.response)


def test_header_names_come_in_every_casing() -> None:
    """Known, extra and made-up names each in the four casings (lower, as given, Title-Case,
    UPPER); without ``casing`` only as given."""
    found = seen(
        pst.header_names(known=("content-Type",), extra=("x-learned",)), 400,
        known_as_given=lambda n: n == "content-Type",
        known_lower=lambda n: n == "content-type",
        known_title=lambda n: n == "Content-Type",
        known_upper=lambda n: n == "CONTENT-TYPE",
        extra_lower=lambda n: n == "x-learned",
        extra_title=lambda n: n == "X-Learned",
        extra_upper=lambda n: n == "X-LEARNED",
        made_up_upper=lambda n: n.startswith("X-") and n not in ("X-Learned", "X-LEARNED") and n == n.upper()
        and any(sum(c.isalpha() for c in part) >= 2 for part in n.split("-")[1:]),  # (Title-Case is not)
        made_up_title=lambda n: n.startswith("X-") and n not in ("X-Learned", "X-LEARNED") and n != n.upper(),
        made_up_lower=lambda n: n.startswith("x-") and n != "x-learned",
    )
    assert all(found.values()), found
    plain = seen(pst.header_names(known=("content-Type",), casing=False), 100,
                 as_given=lambda n: n == "content-Type", other_casing=lambda n: n.lower() == "content-type" and n != "content-Type")
    assert plain == {"as_given": True, "other_casing": False}


def test_http1_requests_send_host_in_every_casing() -> None:
    def host(r: pst.HttpRequest) -> str:
        return r.headers[2][0]

    found = seen(pst.http_requests(protocol=pst.HTTP1), 200,
                 lower=lambda r: host(r) == "host", title=lambda r: host(r) == "Host", upper=lambda r: host(r) == "HOST")
    assert all(found.values()), found


@pytest.mark.parametrize("hostile", [False, True])
def test_header_values_have_no_leading_or_trailing_space(hostile: bool) -> None:
    """What Envoy's codecs accept, for every kind of value that can make such a space (met
    here: a space or tab inside, a list, binary bytes)."""
    found = seen(
        pst.header_values(hostile=hostile), 500,
        trimmed=lambda v: v != v.strip(" \t"),  # must stay False
        inner_space=lambda v: " " in v or "\t" in v,
        list_value=lambda v: "," in v or ";" in v,
        **({"non_utf8": lambda v: any(0xDC80 <= ord(c) <= 0xDCFF for c in v)} if hostile else {}),
    )
    assert found.pop("trimmed") is False
    assert all(found.values()), found


def test_header_values_come_in_every_kind() -> None:
    """Each kind of value is drawn (they share one byte string per header: its kind, list
    separator and literal are picks, its characters the bytes after them)."""
    token = re.compile(r"^[0-9a-z-]+$")
    found = seen(
        pst.header_values(), 500,
        token=lambda v: bool(token.match(v)) and not v.lstrip("-").isdigit(),
        negative_number=lambda v: v.startswith("-") and v[1:].isdigit(),
        big_number=lambda v: v.isdigit() and int(v) > 2**32,
        comma_list=lambda v: ", " in v or ("," in v and " " not in v and token.match(v.replace(",", "") or "a") is not None),
        semicolon_list=lambda v: ";" in v and "=" not in v,
        key_value=lambda v: re.fullmatch(r"[0-9a-z-]+=[0-9a-z-]+", v) is not None,
        literal=lambda v: v == "application/json",
        free_text=lambda v: any(c.isupper() or c in "\"'()<>@[]{}" for c in v) and v != '"quoted"',
        empty=lambda v: v == "",
    )
    assert all(found.values()), found


def test_numbers_stay_in_their_range() -> None:
    @FAST
    @given(pst.header_values())
    def check(v: str) -> None:
        if v.lstrip("-").isdigit() and not v.startswith("0") or v == "0":
            assert -(2**31) <= int(v) <= 2**64

    check()


def test_shrinking_reaches_the_smallest_header_and_value() -> None:
    """The shrinker lowers every pick to its first entry and shortens the characters: the
    one header that matters, in the name's given casing, with the smallest list (what the
    fuzzer's reproducers show); the smallest value of three characters is a token (or the
    smallest ``key=value``, which lowering only the kind or only the length cannot leave)."""
    from hypothesis import find

    fast = settings(database=None, max_examples=2000, derandomize=True, suppress_health_check=list(HealthCheck))
    headers = find(pst.header_lists(names=pst.header_names(extra=("x-t",))),
                   lambda hs: any(k.lower() == "x-t" and "," in v for k, v in hs), settings=fast)
    assert headers == (("x-t", ","),)
    assert find(pst.header_values(), lambda v: len(v) >= 3, settings=fast) in ("000", "0=0")
    assert find(pst.header_values(), lambda v: "=" in v, settings=fast) == "0=0"
    assert find(pst.paths(), lambda p: "?" in p, settings=fast) == "/?"


def test_paths_authorities_and_methods() -> None:
    allowed = set("/?=&-._~%" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    found = seen(
        pst.http_requests(protocol=pst.HTTP1), 300,
        segments=lambda r: "/" in r.headers[1][1][1:].partition("?")[0],
        query=lambda r: "?" in r.headers[1][1],
        root=lambda r: r.headers[1][1] == "/",
        port=lambda r: ":" in r.headers[2][1] and not r.headers[2][1].endswith("]"),
        no_port=lambda r: ":" not in r.headers[2][1],
        post=lambda r: r.headers[0][1] == "POST",
        content_length=lambda r: any(k == "content-length" for k, _ in r.headers),
        made_up_name=lambda r: any(k.lower().startswith("x-") and k.lower() not in pst.COMMON_REQUEST_HEADERS
                                   for k, _ in r.headers[3:]),
    )
    assert all(found.values()), found

    @FAST
    @given(pst.http_requests(protocol=pst.HTTP1))
    def check(r: pst.HttpRequest) -> None:
        path = r.headers[1][1]
        assert path.startswith("/") and set(path) <= allowed
        assert r.headers[0][1] in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")
        host, _, port = r.headers[2][1].rpartition(":") if not r.headers[2][1].endswith("]") else ("", "", "")
        if host and port:
            assert 1 <= int(port) <= 65535

    check()


def test_statuses_are_common_and_any() -> None:
    found = seen(pst.statuses(), 300, common=lambda s: s in (200, 404, 503), other=lambda s: s not in (
        200, 201, 204, 301, 304, 400, 401, 403, 404, 429, 500, 502, 503))
    assert all(found.values()), found

    @FAST
    @given(pst.statuses())
    def check(status: int) -> None:
        assert 200 <= status <= 599

    check()


def test_bodies_come_in_every_kind() -> None:
    def utf8(b: bytes) -> bool:
        try:
            b.decode()
        except UnicodeDecodeError:
            return False
        return True

    found = seen(
        pst.bodies(), 400,
        empty=lambda b: b == b"",
        json_number=lambda b: re.fullmatch(rb'\{"[0-9a-z-]*": -?\d+(, .*)?\}', b) is not None,
        json_text=lambda b: re.fullmatch(rb'\{"[0-9a-z-]*": ".*\}', b, re.S) is not None,
        text=lambda b: utf8(b) and not b.startswith(b"{") and len(b) > 1,
        binary=lambda b: not utf8(b),
    )
    assert all(found.values()), found
