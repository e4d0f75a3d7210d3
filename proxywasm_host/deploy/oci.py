"""Filters as OCI images, the way Istio's ``WasmPlugin`` pulls them (``url: oci://...``).

:func:`package` writes an OCI image layout (a directory, or that directory as a ``.tar``)
holding one filter; :func:`push` sends a layout to a registry and :func:`pull` fetches one
back, both through :mod:`proxywasm_host.deploy.registry` (the distribution API over ``requests``);
:func:`extract` takes the module out of an image the way Istio's image fetcher does.

Two image variants (github.com/solo-io/wasm ``spec/``), both accepted by Istio:

``compat`` (default)
    manifest ``application/vnd.oci.image.manifest.v1+json`` with the annotation
    ``module.wasm.image/variant: compat``; config ``application/vnd.oci.image.config.v1+json``;
    exactly one layer ``application/vnd.oci.image.layer.v1.tar+gzip`` whose tar holds
    ``plugin.wasm`` and ``runtime-config.json``.  Istio extracts ``plugin.wasm`` from the
    last (here: only) layer.  Docker, podman, crane, skopeo handle it like any image.

``oci``
    the wasme / WebAssembly Hub artifact: config ``application/vnd.module.wasm.config.v1+json``
    (the ``runtime-config.json``), and two layers: that same config blob, then the module as
    ``application/vnd.module.wasm.content.layer.v1+wasm`` (Istio requires exactly these two).

``runtime-config.json`` is what ``wasme build`` wrote::

    {"type": "envoy_proxy", "abiVersions": ["proxy_abi_version_0_2_1"], "config": {"rootIds": ["my_root"]}}

Everything written is reproducible: the same module and options give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxywasm_host.errors import OciError

__all__ = [
    "COMPAT_LAYER_MEDIA_TYPE",
    "DOCKER_LAYER_MEDIA_TYPE",
    "WASM_CONFIG_MEDIA_TYPE",
    "WASM_LAYER_MEDIA_TYPE",
    "ImageRef",
    "Packaged",
    "Pulled",
    "OciError",
    "extract",
    "package",
    "parse_ref",
    "pull",
    "push",
    "read_layout",
    "runtime_config",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
IMAGE_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
COMPAT_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER_MEDIA_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
WASM_CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
VARIANT_ANNOTATION = "module.wasm.image/variant"
REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
PLUGIN_FILE = "plugin.wasm"
CONFIG_FILE = "runtime-config.json"


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """``[oci://]registry[:port]/repository[:tag|@digest]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def target(self) -> str:
        """``registry/repo:tag`` or ``registry/repo@digest``."""
        base = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag or 'latest'}"

    @property
    def url(self) -> str:
        """The ``oci://`` URL a WasmPlugin takes."""
        return f"oci://{self.target}"

    @property
    def loopback(self) -> bool:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else self.registry.split("]")[0][1:]
        return host in ("localhost", "::1") or host.startswith("127.")


#: distribution's reference grammar (distribution/reference/regexp.go)
_REPO_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_REGISTRY = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                       r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?")
_EXAMPLE = "e.g. 127.0.0.1:5000/filters/hello:v1"


def parse_ref(text: str) -> ImageRef:
    """Parse an image reference; the registry part is required (``host[:port]/repo[:tag]``).
    Anything distribution would refuse is refused here, with what is wrong in one line."""
    if "://" in text and not text.startswith("oci://"):
        scheme = text.split("://", 1)[0]
        raise OciError(f"{text!r}: an image reference has no {scheme}:// (write REGISTRY/REPOSITORY:TAG; "
                       "--plain-http for a registry without TLS)")
    ref = text[len("oci://"):] if text.startswith("oci://") else text
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise OciError(f"{text!r}: a digest must be sha256:<64 lower-case hex digits>")
    registry, slash, rest = ref.partition("/")
    if not slash or not rest or not ("." in registry or ":" in registry or registry == "localhost"):
        raise OciError(f"{text!r}: expected REGISTRY[:PORT]/REPOSITORY[:TAG], {_EXAMPLE}")
    if not _REGISTRY.fullmatch(registry):
        raise OciError(f"{text!r}: {registry!r} is not a registry HOST[:PORT]")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not tag:
            raise OciError(f"{text!r}: empty tag")
        if not _TAG.fullmatch(tag):
            raise OciError(f"{text!r}: tag {tag!r} is not valid (letters, digits, _ . -; at most 128; "
                           "not starting with . or -)")
    if rest != rest.lower():
        raise OciError(f"{text!r}: repository names must be lower case")
    if not all(_REPO_COMPONENT.fullmatch(part) for part in rest.split("/")) or len(rest) > 255:
        raise OciError(f"{text!r}: repository {rest!r} is not valid (lower-case letters and digits, "
                       f"separated by . _ __ or -, components joined by /)")
    return ImageRef(registry, rest, tag, digest)


# ---------------------------------------------------------------------------------------------
# packaging
# ---------------------------------------------------------------------------------------------


def runtime_config(root_ids: Sequence[str], abi_versions: Sequence[str]) -> dict[str, Any]:
    """The ``runtime-config.json`` object (wasme's ``Runtime`` message, JSON names)."""
    return {"type": "envoy_proxy", "abiVersions": list(abi_versions), "config": {"rootIds": list(root_ids)}}


def _abi_exports(wasm: bytes) -> list[str]:
    from proxywasm_host.core.spec import abi_markers
    from proxywasm_host.runtime.binary import scan_exports

    try:
        names = [name for name, kind in scan_exports(wasm) if kind == 0]
    except Exception:  # noqa: BLE001 - not a module we can read: validated by the caller
        return []
    return abi_markers(names)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(files: Iterable[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass
class Packaged:
    """What :func:`package` wrote."""

    path: Path  # the layout directory or .tar
    tag: str
    manifest_digest: str
    manifest: dict[str, Any]
    runtime_config: dict[str, Any]
    variant: str


def package(
    wasm: str | os.PathLike[str] | bytes,
    output: str | os.PathLike[str],
    *,
    tag: str = "latest",
    root_ids: Sequence[str] = (),
    abi_versions: Sequence[str] | None = None,
    variant: str = "compat",
    annotations: dict[str, str] | None = None,
) -> Packaged:
    """Write an OCI image layout holding ``wasm`` to ``output`` (a directory; a path ending
    in ``.tar`` gets the layout as a tar archive instead).

    ``tag`` may be ``NAME:TAG`` (only TAG names the image inside the layout, as
    ``org.opencontainers.image.ref.name``).  ``abi_versions`` defaults to the module's
    ``proxy_abi_version_*`` exports."""
    if variant not in ("compat", "oci"):
        raise OciError(f"variant must be 'compat' or 'oci', not {variant!r}")
    module = bytes(wasm) if isinstance(wasm, (bytes, bytearray)) else Path(wasm).read_bytes()
    if module[:4] != b"\0asm":
        raise OciError(f"{wasm if not isinstance(wasm, (bytes, bytearray)) else 'module'}: not a WebAssembly binary")
    ref_tag = tag.rsplit(":", 1)[1] if ":" in tag.rsplit("/", 1)[-1] else tag
    if not ref_tag:
        raise OciError(f"--tag {tag!r}: empty tag")
    abis = list(abi_versions) if abi_versions else _abi_exports(module)
    config = runtime_config(list(root_ids), abis)
    config_bytes = json.dumps(config, indent=2).encode() + b"\n"
    blobs: dict[str, bytes] = {}

    def add(data: bytes, media_type: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        digest = _digest(data)
        blobs[digest] = data
        desc: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if extra:
            desc["annotations"] = extra
        return desc

    manifest_annotations = dict(annotations or {})
    if variant == "compat":
        layer_tar = _tar([(PLUGIN_FILE, module), (CONFIG_FILE, config_bytes)])
        layer = add(_gzip(layer_tar), COMPAT_LAYER_MEDIA_TYPE)
        image_config = {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {"Labels": {"module.wasm.runtime/type": "envoy_proxy",
                                  "module.wasm.runtime/abi_version": ",".join(abis)}},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        }
        config_desc = add(_json_bytes(image_config), IMAGE_CONFIG_MEDIA_TYPE)
        layers = [layer]
        manifest_annotations[VARIANT_ANNOTATION] = "compat"
    else:
        config_desc = add(config_bytes, WASM_CONFIG_MEDIA_TYPE, {TITLE: CONFIG_FILE})
        layers = [dict(config_desc), add(module, WASM_LAYER_MEDIA_TYPE, {TITLE: "filter.wasm"})]
        manifest_annotations["module.wasm.runtime/abi_version"] = ",".join(abis)
        manifest_annotations["module.wasm.runtime/type"] = "envoy_proxy"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_desc,
        "layers": layers,
        "annotations": manifest_annotations,
    }
    manifest_desc = add(_json_bytes(manifest), MANIFEST_MEDIA_TYPE)
    manifest_desc["annotations"] = {REF_NAME: ref_tag}
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [manifest_desc]}
    files = [("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})), ("index.json", _json_bytes(index))]
    files += [(f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in sorted(blobs.items())]
    out = Path(output)
    if out.suffix == ".tar":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(_tar(files))
    else:
        if out.exists() and any(out.iterdir()) and not (out / "oci-layout").exists():
            raise OciError(f"{out} exists and is not an OCI layout; give an empty or new directory")
        for name, data in files:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Packaged(out, ref_tag, manifest_desc["digest"], manifest, config, variant)


# ---------------------------------------------------------------------------------------------
# reading layouts and images
# ---------------------------------------------------------------------------------------------


class _Layout:
    def __init__(self, root: Path, cleanup: Path | None = None) -> None:
        self.root = root
        self._cleanup = cleanup

    def close(self) -> None:
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)

    def __enter__(self) -> _Layout:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def blob(self, digest: str) -> bytes:
        algorithm, _, value = digest.partition(":")
        path = self.root / "blobs" / algorithm / value
        try:
            data = path.read_bytes()
        except OSError:
            raise OciError(f"{self.root}: blob {digest} is missing") from None
        if algorithm == "sha256" and hashlib.sha256(data).hexdigest() != value:
            raise OciError(f"{self.root}: blob {digest} does not match its digest")
        return data

    def index(self) -> dict[str, Any]:
        try:
            index: dict[str, Any] = json.loads((self.root / "index.json").read_text())
            return index
        except (OSError, ValueError) as exc:
            raise OciError(f"{self.root}: no readable index.json ({exc})") from None

    def tags(self) -> list[str]:
        return [m.get("annotations", {}).get(REF_NAME, "") for m in self.index().get("manifests", [])]

    def manifest(self, tag: str | None = None) -> tuple[str, dict[str, Any]]:
        entries = self.index().get("manifests", [])
        if tag is not None:
            entries = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == tag]
            if not entries:
                raise OciError(f"{self.root}: no image tagged {tag!r} (tags: {self.tags()})")
        if len(entries) != 1:
            raise OciError(f"{self.root}: {len(entries)} images; say which tag (tags: {self.tags()})")
        digest = entries[0]["digest"]
        doc = json.loads(self.blob(digest))
        if doc.get("mediaType") == INDEX_MEDIA_TYPE or "manifests" in doc:
            raise OciError(f"{self.root}: {digest} is an image index (multi-platform); a filter image has one manifest")
        return digest, doc


def read_layout(path: str | os.PathLike[str]) -> _Layout:
    """Open a layout directory, or a ``.tar`` of one (unpacked into a temporary directory)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "oci-layout").exists():
            raise OciError(f"{p}: not an OCI image layout (no oci-layout file)")
        return _Layout(p)
    if p.is_file() and tarfile.is_tarfile(p):
        tmp = Path(tempfile.mkdtemp(prefix="pwh-oci-"))
        with tarfile.open(p) as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / "oci-layout").exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise OciError(f"{p}: the archive holds no OCI image layout")
        return _Layout(tmp, cleanup=tmp)
    raise OciError(f"{p}: no such layout directory or .tar")


def _plugin_from_targz(data: bytes) -> tuple[bytes, dict[str, Any] | None]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(data)))
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise OciError(f"the layer is not a tar.gz ({exc})") from None
    module = config = None
    with tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if base == PLUGIN_FILE and member.isfile() and module is None:
                module = tar.extractfile(member).read()  # type: ignore[union-attr]
            elif base == CONFIG_FILE and member.isfile() and config is None:
                try:
                    config = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                except ValueError:
                    config = None
    if module is None:
        raise OciError(f"{PLUGIN_FILE} not found in the layer")
    return module, config


def extract(manifest: dict[str, Any], blob: Any) -> tuple[bytes, dict[str, Any] | None, str]:
    """(module, runtime config or None, variant) from an image, by Istio's rules
    (istio/pkg/wasm/imagefetcher.go): a Docker manifest → the last layer must be a Docker
    rootfs tar.gz with ``plugin.wasm``; otherwise the last layer as an OCI tar+gzip (compat);
    otherwise exactly two layers, one ``application/vnd.module.wasm.content.layer.v1+wasm`` (oci).
    ``blob(digest) -> bytes``."""
    layers = manifest.get("layers") or []
    if not layers:
        raise OciError("the image has no layers")
    last = layers[-1]
    if manifest.get("mediaType") == DOCKER_MANIFEST_MEDIA_TYPE:
        if last.get("mediaType") != DOCKER_LAYER_MEDIA_TYPE:
            raise OciError(f"docker image: last layer is {last.get('mediaType')}, expected {DOCKER_LAYER_MEDIA_TYPE}")
        module, config = _plugin_from_targz(blob(last["digest"]))
        return module, config, "docker"
    if last.get("mediaType") == COMPAT_LAYER_MEDIA_TYPE:
        module, config = _plugin_from_targz(blob(last["digest"]))
        return module, config, "compat"
    if len(layers) != 2:
        raise OciError(f"not a Wasm image: {len(layers)} layers of types {[l.get('mediaType') for l in layers]}")
    wasm_layers = [l for l in layers if l.get("mediaType") == WASM_LAYER_MEDIA_TYPE]
    if not wasm_layers:
        raise OciError(f"no layer of type {WASM_LAYER_MEDIA_TYPE}")
    module = blob(wasm_layers[0]["digest"])
    config = None
    cfg = manifest.get("config") or {}
    if cfg.get("mediaType") == WASM_CONFIG_MEDIA_TYPE:
        try:
            config = json.loads(blob(cfg["digest"]))
        except ValueError:
            config = None
    return module, config, "oci"


# ---------------------------------------------------------------------------------------------
# registries (proxywasm_host.deploy.registry: the distribution API over requests)
# ---------------------------------------------------------------------------------------------


def _client(ref: ImageRef, plain_http: bool | None, username: str | None, password: str | None,
            actions: str) -> Any:
    from proxywasm_host.deploy.registry import RegistryClient, find_credentials

    insecure = ref.loopback if plain_http is None else plain_http
    client = RegistryClient(ref.registry, ref.repository, plain_http=insecure,
                            credentials=find_credentials(ref.registry, username, password), actions=actions)
    client.check()  # reachable, speaks /v2/, takes the credentials: one clear line otherwise
    return client


def push(
    layout: str | os.PathLike[str],
    ref: str | ImageRef,
    *,
    tag: str | None = None,
    plain_http: bool | None = None,
    username: str | None = None,
    password: str | None = None,
) -> str:
    """Push the image tagged ``tag`` (default: the layout's only image) to ``ref``; return
    the manifest digest (the same as in the layout: blobs and manifest go up byte for byte).
    ``plain_http`` defaults to true for loopback registries; credentials: see
    :func:`proxywasm_host.deploy.registry.find_credentials`."""
    target = parse_ref(ref) if isinstance(ref, str) else ref
    if target.digest:
        raise OciError("push to a tag, not to a digest")
    with read_layout(layout) as lay:
        digest, manifest = lay.manifest(tag)
        client = _client(target, plain_http, username, password, "pull,push")
        for desc in [manifest["config"], *manifest.get("layers", [])]:
            blob_digest = desc["digest"]
            if not client.has_blob(blob_digest):
                client.put_blob(blob_digest, lay.blob(blob_digest))
        body = lay.blob(digest)
        sent = client.put_manifest(target.tag or "latest", body, manifest.get("mediaType") or MANIFEST_MEDIA_TYPE)
        if sent != digest:
            raise OciError(f"{target.target}: the registry stored manifest {sent}, not {digest}")
    return digest


@dataclass
class Pulled:
    """What :func:`pull` fetched."""

    ref: ImageRef
    manifest_digest: str
    wasm: Path  # the module, written as <output>/plugin.wasm
    runtime_config: dict[str, Any] | None
    variant: str
    layout: Path  # the image as an OCI layout, <output>/layout


def pull(
    ref: str | ImageRef,
    output: str | os.PathLike[str],
    *,
    plain_http: bool | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Pulled:
    """Fetch an image into ``output/layout`` (an OCI layout) and take the module out of it
    into ``output/plugin.wasm`` (and ``output/runtime-config.json`` when the image has one)."""
    source = parse_ref(ref) if isinstance(ref, str) else ref
    client = _client(source, plain_http, username, password, "pull")
    reference = source.digest or source.tag or "latest"
    body, media_type = client.get_manifest(reference)
    digest = _digest(body)
    if source.digest and digest != source.digest:
        raise OciError(f"{source.target}: the registry sent manifest {digest}")
    try:
        manifest = json.loads(body)
    except ValueError:
        raise OciError(f"{source.target}: the manifest is not JSON") from None
    if manifest.get("mediaType", media_type) in (INDEX_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.list.v2+json") \
            or "manifests" in manifest:
        raise OciError(f"{source.target}: an image index (multi-platform); a filter image has one manifest")
    blobs = {digest: body}
    for desc in [manifest.get("config") or {}, *manifest.get("layers", [])]:
        if desc.get("digest") and desc["digest"] not in blobs:
            blobs[desc["digest"]] = client.get_blob(desc["digest"])
    out = Path(output)
    layout_dir = out / "layout"
    if layout_dir.exists():
        shutil.rmtree(layout_dir)
    (layout_dir / "blobs" / "sha256").mkdir(parents=True)
    for blob_digest, data in blobs.items():
        (layout_dir / "blobs" / "sha256" / blob_digest.split(":", 1)[1]).write_bytes(data)
    entry = {"mediaType": manifest.get("mediaType") or media_type or MANIFEST_MEDIA_TYPE, "digest": digest,
             "size": len(body), "annotations": {REF_NAME: source.tag or "latest"}}
    (layout_dir / "oci-layout").write_bytes(_json_bytes({"imageLayoutVersion": "1.0.0"}))
    (layout_dir / "index.json").write_bytes(_json_bytes({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                                                          "manifests": [entry]}))
    with read_layout(layout_dir) as lay:
        module, config, variant = extract(manifest, lay.blob)
    wasm_path = out / PLUGIN_FILE
    wasm_path.write_bytes(module)
    if config is not None:
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return Pulled(source, digest, wasm_path, config, variant, layout_dir)
