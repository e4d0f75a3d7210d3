"""Manifests for running a filter outside this host: Istio's ``WasmPlugin`` and an Envoy bootstrap.

:func:`wasm_plugin` builds an ``extensions.istio.io/v1alpha1`` ``WasmPlugin`` and
:func:`validate_wasm_plugin` checks one against the fields and types the API defines: the
CRD's OpenAPI schema (:data:`WASM_PLUGIN_SCHEMA`, transcribed from istio/api
``kubernetes/customresourcedefinitions.gen.yaml`` and ``extensions/v1alpha1/wasm.proto``) plus
its CEL rules (url scheme, ``selector`` xor ``targetRefs``, ``valueFrom: HOST`` without
``value``, no wildcards in label matches), re-stated in Python.

:func:`envoy_bootstrap` is the static bootstrap the differential backend runs
(:func:`proxywasm_host.envoy.render_envoy_config`), pointed at a real upstream, for running
the same filter in a real Envoy by hand (``envoy -c envoy.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "API_VERSION",
    "WASM_PLUGIN_SCHEMA",
    "envoy_bootstrap",
    "to_yaml",
    "validate_wasm_plugin",
    "wasm_plugin",
]

API_VERSION = "extensions.istio.io/v1alpha1"
PHASES = ("UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS")
PULL_POLICIES = ("UNSPECIFIED_POLICY", "IfNotPresent", "Always")
FAIL_STRATEGIES = ("FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD")  # FAIL_RELOAD: Istio 1.25+
PLUGIN_TYPES = ("UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK")

_TARGET_REF = {
    "type": "object",
    "required": ["kind", "name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string", "maxLength": 253,
                  "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string"},
    },
}

#: JSON Schema of a whole WasmPlugin object (the CRD's openAPIV3Schema for ``spec``, closed
#: against unknown fields as the API server prunes them, plus apiVersion/kind/metadata).
WASM_PLUGIN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "WasmPlugin"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 253,
                         "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
                "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "maxProperties": 4096,
                            "additionalProperties": {"type": "string", "maxLength": 63},
                        }
                    },
                },
                "targetRef": _TARGET_REF,
                "targetRefs": {"type": "array", "maxItems": 16, "items": _TARGET_REF},
                "url": {"type": "string", "minLength": 1},
                "sha256": {"type": "string", "pattern": r"(^$|^[a-f0-9]{64}$)"},
                "imagePullPolicy": {"type": "string", "enum": list(PULL_POLICIES)},
                "imagePullSecret": {"type": "string", "minLength": 1, "maxLength": 253},
                "verificationKey": {"type": "string"},
                "pluginConfig": {"type": "object"},
                "pluginName": {"type": "string", "minLength": 1, "maxLength": 256},
                "phase": {"type": "string", "enum": list(PHASES)},
                "priority": {"type": ["integer", "null"], "minimum": -(2**31), "maximum": 2**31 - 1},
                "failStrategy": {"type": "string", "enum": list(FAIL_STRATEGIES)},
                "vmConfig": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "env": {
                            "type": "array",
                            "maxItems": 256,
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string", "minLength": 1, "maxLength": 256},
                                    "value": {"type": "string", "maxLength": 2048},
                                    "valueFrom": {"type": "string", "enum": ["INLINE", "HOST"]},
                                },
                            },
                        }
                    },
                },
                "match": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "mode": {"type": "string", "enum": ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"]},
                            "ports": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["number"],
                                    "additionalProperties": False,
                                    "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}},
                                },
                            },
                        },
                    },
                },
                "type": {"type": "string", "enum": list(PLUGIN_TYPES)},
            },
        },
        "status": {"type": "object"},
    },
}


def _cel_rules(spec: Mapping[str, Any]) -> list[str]:
    """The CRD's x-kubernetes-validations, which JSON Schema cannot say."""
    errors: list[str] = []
    url = spec.get("url")
    if isinstance(url, str) and url:
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme not in ("", "http", "https", "oci", "file"):
            errors.append(f"spec.url: url must have schema one of [http, https, file, oci] (got {scheme!r})")
    set_fields = [k for k in ("selector", "targetRef", "targetRefs") if spec.get(k) not in (None, [], {})]
    if len(set_fields) > 1:
        errors.append(f"spec: only one of targetRefs or selector can be set (got {', '.join(set_fields)})")
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if isinstance(labels, Mapping):
        for key, value in labels.items():
            if not key:
                errors.append("spec.selector.matchLabels: key must not be empty")
            if "*" in str(key):
                errors.append(f"spec.selector.matchLabels: wildcard not allowed in label key match ({key!r})")
            if isinstance(value, str) and "*" in value:
                errors.append(f"spec.selector.matchLabels[{key!r}]: wildcard not allowed in label value match")
    refs = list(spec.get("targetRefs") or []) + ([spec["targetRef"]] if spec.get("targetRef") else [])
    for ref in refs:
        if isinstance(ref, Mapping) and ref.get("namespace"):
            errors.append("spec.targetRefs: cross namespace referencing is not currently supported")
    env = ((spec.get("vmConfig") or {}).get("env")) or []
    names = set()
    for i, var in enumerate(env if isinstance(env, list) else []):
        if not isinstance(var, Mapping):
            continue
        if var.get("valueFrom") == "HOST" and "value" in var:
            errors.append(f"spec.vmConfig.env[{i}]: value may only be set when valueFrom is INLINE")
        if var.get("name") in names:
            errors.append(f"spec.vmConfig.env[{i}]: duplicate name {var.get('name')!r} (a list map keyed by name)")
        names.add(var.get("name"))
    for i, m in enumerate(spec.get("match") or []):
        ports = [p.get("number") for p in (m.get("ports") or []) if isinstance(p, Mapping)] if isinstance(m, Mapping) else []
        if len(ports) != len(set(ports)):
            errors.append(f"spec.match[{i}].ports: duplicate port numbers (a list map keyed by number)")
    sha = spec.get("sha256")
    if isinstance(url, str) and "@sha256:" in url and sha and url.rsplit("@sha256:", 1)[1] != sha:
        errors.append("spec.sha256: must match the digest in the url")
    return errors


def validate_wasm_plugin(doc: Mapping[str, Any]) -> list[str]:
    """Every way ``doc`` breaks the WasmPlugin API (empty list: valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(WASM_PLUGIN_SCHEMA)
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{where}: {err.message}")
    if isinstance(doc, Mapping) and isinstance(doc.get("spec"), Mapping):
        errors += _cel_rules(doc["spec"])
    return errors


def wasm_plugin(
    name: str,
    url: str,
    *,
    namespace: str | None = None,
    selector: Mapping[str, str] | None = None,
    target_refs: Sequence[Mapping[str, str]] | None = None,
    plugin_config: Mapping[str, Any] | None = None,
    plugin_name: str | None = None,
    phase: str | None = None,
    priority: int | None = None,
    image_pull_policy: str | None = None,
    image_pull_secret: str | None = None,
    sha256: str | None = None,
    fail_strategy: str | None = None,
    env: Mapping[str, str] | None = None,
    host_env: Sequence[str] = (),
    plugin_type: str | None = None,
    match: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A WasmPlugin object (a dict; :func:`to_yaml` prints it); raises ValueError when it
    does not validate."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {}
    if selector:
        spec["selector"] = {"matchLabels": dict(selector)}
    if target_refs:
        spec["targetRefs"] = [dict(r) for r in target_refs]
    spec["url"] = url
    if sha256:
        spec["sha256"] = sha256
    if image_pull_policy:
        spec["imagePullPolicy"] = image_pull_policy
    if image_pull_secret:
        spec["imagePullSecret"] = image_pull_secret
    if plugin_name:
        spec["pluginName"] = plugin_name
    if phase:
        spec["phase"] = phase
    if priority is not None:
        spec["priority"] = priority
    if fail_strategy:
        spec["failStrategy"] = fail_strategy
    if plugin_type:
        spec["type"] = plugin_type
    if plugin_config is not None:
        spec["pluginConfig"] = dict(plugin_config)
    vars_ = [{"name": k, "value": v} for k, v in (env or {}).items()] + [{"name": k, "valueFrom": "HOST"} for k in host_env]
    if vars_:
        spec["vmConfig"] = {"env": vars_}
    if match:
        spec["match"] = [dict(m) for m in match]
    doc = {"apiVersion": API_VERSION, "kind": "WasmPlugin", "metadata": metadata, "spec": spec}
    problems = validate_wasm_plugin(doc)
    if problems:
        raise ValueError("invalid WasmPlugin:\n  " + "\n  ".join(problems))
    return doc


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def envoy_bootstrap(
    wasm: str | Path,
    *,
    upstream: str = "http://127.0.0.1:8000",
    port: int = 8080,
    admin_port: int = 9901,
    root_id: str = "",
    vm_id: str = "",
    configuration: bytes = b"",
    vm_configuration: bytes = b"",
    clusters: Mapping[str, str] | None = None,
    http2_upstream: bool = False,
) -> dict[str, Any]:
    """The differential backend's bootstrap for one filter in front of ``upstream``, listening on
    ``127.0.0.1:port``; ``clusters`` maps callout cluster names to ``http://host:port`` URLs."""
    from proxywasm_host.envoy import render_envoy_config
    from proxywasm_host.http.scenario import PluginSpec

    spec = PluginSpec(Path(wasm), root_id, configuration, vm_configuration, vm_id, "")
    names = dict(clusters or {})
    config = render_envoy_config(spec, listener_port=port, admin_port=admin_port, upstream_port=1,
                                 http2=http2_upstream, access_log=False, clusters={n: 1 for n in names})
    targets = {"upstream": upstream, **names}
    for cluster in config["static_resources"]["clusters"]:
        url = urlsplit(targets[cluster["name"]])
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"cluster {cluster['name']!r}: {targets[cluster['name']]!r} is not an http://host[:port] URL")
        address = {"socket_address": {"address": url.hostname, "port_value": url.port or 80}}
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = address
        if not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", url.hostname):
            cluster["type"] = "STRICT_DNS"  # a host name: resolve it
    return config


def to_yaml(doc: Any) -> str:
    import yaml

    return str(yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False, default_flow_style=False))
