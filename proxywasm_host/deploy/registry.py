"""A small OCI distribution client: push and pull one image, with Basic and bearer-token auth.

It speaks the distribution API (``/v2/``) with ``requests`` and nothing else, so that every
failure is one line and quick (a connect timeout of 3 s, no retry loops):

* authentication follows the registry's ``WWW-Authenticate`` challenge: ``Basic`` (htpasswd)
  sends the credentials; ``Bearer realm=...,service=...[,scope=...]`` fetches a token from the
  realm (with the credentials, if any: the registry token flow of docker/distribution) and
  sends it;
* credentials come from :func:`find_credentials`: ``--username``/``--password`` (flags), the
  environment (``PROXYWASM_HOST_REGISTRY_USERNAME`` / ``..._PASSWORD``), or the Docker config
  file (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: ``auths.HOST.auth``);
* push uploads the blobs a registry does not have (monolithic POST + PUT) and the manifest
  byte for byte; pull fetches the manifest and its blobs, checks every digest, and writes an
  OCI image layout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from proxywasm_host.errors import OciError

__all__ = ["Credentials", "RegistryClient", "find_credentials"]

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
ENV_USERNAME = "PROXYWASM_HOST_REGISTRY_USERNAME"
ENV_PASSWORD = "PROXYWASM_HOST_REGISTRY_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for messages ("--username", "environment", "~/.docker/config.json")

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(username={self.username!r}, source={self.source!r})"


def _docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _docker_config_credentials(registry: str) -> Credentials | None:
    path = _docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OciError(f"{path}: unreadable Docker config ({exc})") from None
    auths = doc.get("auths") or {}
    for key, entry in auths.items():
        host = urlsplit(key).netloc if "://" in key else key.split("/", 1)[0]
        if host != registry or not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise OciError(f"{path}: the auth entry for {registry} is not base64 of user:password") from None
            return Credentials(user, password, str(path))
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""), str(path))
    return None


def find_credentials(registry: str, username: str | None = None, password: str | None = None) -> Credentials | None:
    """The credentials for ``registry``: the flags, else the environment, else the Docker config.

    A username without any password is refused (no prompt: the caller asks, if it can)."""
    env = os.environ
    if username:
        pw = password if password is not None else env.get(ENV_PASSWORD)
        if pw is None:
            raise OciError(f"--username {username}: no password (give --password, set ${ENV_PASSWORD}, "
                           "or run from a terminal to be asked)")
        return Credentials(username, pw, "--username")
    if env.get(ENV_USERNAME):
        return Credentials(env[ENV_USERNAME], env.get(ENV_PASSWORD, ""), "environment")
    return _docker_config_credentials(registry)


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` → ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class RegistryClient:
    """One registry, one repository: the requests of push and pull, authenticated on demand."""

    def __init__(self, registry: str, repository: str, *, plain_http: bool, credentials: Credentials | None,
                 actions: str = "pull") -> None:
        try:
            import requests
        except ImportError:
            raise OciError("pushing and pulling need requests: pip install 'proxywasm-host[server]'") from None
        self.requests = requests
        self.registry = registry
        self.repository = repository
        self.base = f"{'http' if plain_http else 'https'}://{registry}"
        self.plain_http = plain_http
        self.credentials = credentials
        self.actions = actions
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "proxywasm-host"
        host = registry.rsplit(":", 1)[0].strip("[]")
        if host in ("localhost", "::1") or host.startswith("127."):
            self.session.trust_env = False  # no proxy for a registry on this machine
        self._authorization: str | None = None

    # -- transport ----------------------------------------------------------------------------------
    def request(self, method: str, path_or_url: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        response = self._send(method, url, **kwargs)
        if response.status_code == 401:
            self._authenticate(response)
            response = self._send(method, url, **kwargs)
            if response.status_code == 401:
                raise OciError(self._refused())
        if response.status_code == 403:
            who = f"user {self.credentials.username!r}" if self.credentials else "an anonymous client"
            raise OciError(f"{self.registry}: {who} may not {self.actions} {self.repository} (403 denied)")
        if response.status_code not in ok:
            raise OciError(f"{method} {url}: {self._describe(response)}")
        return response

    def _send(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", None) or {})
        if self._authorization and urlsplit(url).netloc == self.registry:
            headers["Authorization"] = self._authorization
        try:
            return self.session.request(method, url, headers=headers, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                                        allow_redirects=True, **kwargs)
        except self.requests.exceptions.SSLError:
            raise OciError(f"cannot reach the registry at {self.base}: TLS handshake failed "
                           "(a plain-HTTP registry needs --plain-http)") from None
        except self.requests.exceptions.ConnectTimeout:
            raise OciError(f"cannot reach the registry at {self.base}: no answer within {CONNECT_TIMEOUT:g} s") from None
        except self.requests.exceptions.ConnectionError as exc:
            raise OciError(f"cannot reach the registry at {self.base}: {_reason(exc)}") from None
        except self.requests.exceptions.RequestException as exc:
            raise OciError(f"{method} {url} failed: {_reason(exc)}") from None

    def _authenticate(self, response: Any) -> None:
        header = response.headers.get("WWW-Authenticate", "")
        scheme, params = _challenge(header)
        creds = self.credentials
        if scheme == "basic":
            if creds is None:
                raise OciError(self._needs_credentials())
            self._authorization = "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        elif scheme == "bearer" and params.get("realm"):
            query = {"service": params.get("service", ""),
                     "scope": params.get("scope") or f"repository:{self.repository}:{self.actions}"}
            auth = (creds.username, creds.password) if creds else None
            try:
                token = self.session.get(params["realm"], params=query, auth=auth,
                                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
            except self.requests.exceptions.RequestException as exc:
                raise OciError(f"token server {params['realm']}: {_reason(exc)}") from None
            if token.status_code in (401, 403):
                raise OciError(self._refused() if creds else self._needs_credentials())
            if token.status_code != 200:
                raise OciError(f"token server {params['realm']}: {self._describe(token)}")
            try:
                doc = token.json()
                value = doc.get("token") or doc.get("access_token")
            except ValueError:
                value = None
            if not value:
                raise OciError(f"token server {params['realm']} sent no token")
            self._authorization = f"Bearer {value}"
        else:
            raise OciError(f"{self.registry}: unsupported authentication challenge {header!r}")

    def _needs_credentials(self) -> str:
        return (f"{self.registry} requires credentials: --username (password from --password or "
                f"${ENV_PASSWORD}), ${ENV_USERNAME}, or an auths entry in {_docker_config_path()}")

    def _refused(self) -> str:
        creds = self.credentials
        if creds is None:
            return self._needs_credentials()
        return f"{self.registry} refused the credentials of {creds.username!r} (from {creds.source})"

    @staticmethod
    def _describe(response: Any) -> str:
        reason = f"{response.status_code} {response.reason}"
        try:
            errors = response.json().get("errors") or []
            if errors:
                reason += ": " + "; ".join(f"{e.get('code')} {e.get('message', '')}".strip() for e in errors)
        except (ValueError, AttributeError):
            text = response.text.strip().splitlines()
            if text:
                reason += ": " + text[0][:200]
        return reason

    # -- the API ------------------------------------------------------------------------------------------
    def check(self) -> None:
        """``GET /v2/``: reachable, speaks the API, and takes our credentials."""
        self.request("GET", "/v2/")

    def has_blob(self, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{self.repository}/blobs/{digest}", ok=(200, 404))
        return bool(response.status_code == 200)

    def put_blob(self, digest: str, data: bytes) -> None:
        started = self.request("POST", f"/v2/{self.repository}/blobs/uploads/", ok=(202,))
        location = started.headers.get("Location")
        if not location:
            raise OciError(f"{self.registry}: the upload of {digest} got no Location")
        url = urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        self.request("PUT", url, ok=(201, 204), data=data, headers={"Content-Type": "application/octet-stream"})

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        response = self.request("PUT", f"/v2/{self.repository}/manifests/{reference}", ok=(201, 200),
                                data=data, headers={"Content-Type": media_type})
        return str(response.headers.get("Docker-Content-Digest") or _digest(data))

    def get_manifest(self, reference: str) -> tuple[bytes, str]:
        response = self.request("GET", f"/v2/{self.repository}/manifests/{reference}", ok=(200, 404),
                                headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            raise OciError(f"{self.registry}/{self.repository}:{reference}: no such image (manifest unknown)")
        return response.content, response.headers.get("Content-Type", "").split(";")[0].strip()

    def get_blob(self, digest: str) -> bytes:
        data = self.request("GET", f"/v2/{self.repository}/blobs/{digest}").content
        if _digest(data) != digest:
            raise OciError(f"{self.registry}: blob {digest} does not match its digest")
        return bytes(data)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reason(exc: BaseException) -> str:
    """One line for a requests exception (the innermost cause, without the URL noise)."""
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    for known in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                  "No route to host", "timed out", "Network is unreachable"):
        if known in str(exc) or known in text:
            return known
    return text.splitlines()[0][:200]
