"""Send an HTTP callout to a real upstream and answer it with the real response.

Adapter layer (does I/O): used when a test maps a cluster name to a URL,
``Host(clusters={"auth": "http://127.0.0.1:8081"})``.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

from proxywasm_host.core.callouts import HttpCallout


def forward_callout(callout: HttpCallout, base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", ""):
        raise ValueError(f"cluster URL {base_url!r}: only http:// upstreams are supported")
    method, path, headers = callout.http_request()
    timeout = callout.timeout_ms / 1000 if callout.timeout_ms else None
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    started = time.monotonic()
    try:
        conn.putrequest(method, (parts.path.rstrip("/") + path) or "/", skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders(callout.body or None)
        resp = conn.getresponse()
        body = resp.read()
        reply_headers = [(k.lower(), v) for k, v in resp.getheaders()]
        # Envoy's router adds this to every upstream response, callouts included.
        elapsed_ms = int((time.monotonic() - started) * 1000)
        reply_headers.append(("x-envoy-upstream-service-time", str(elapsed_ms)))
    except TimeoutError:
        callout.time_out()
        return
    except OSError:
        callout.fail()
        return
    finally:
        conn.close()
    callout.respond(resp.status, reply_headers, body)
