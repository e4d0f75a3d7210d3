"""Consistency check for abi/*.json (stdlib only).

Run: ``python abi/check_abi.py``. Exits non-zero with one line per problem.
The expected version differences are the ones documented in docs/abi-notes.md §2.2 and §2.6;
see abi/README.md.
"""

from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
VERSIONS = ("0.1.0", "0.2.0", "0.2.1")
TYPES = {"i32", "i64"}
GROUPS = {
    "logging", "time", "configuration", "buffers", "header_maps", "stream_control",
    "local_response", "http_callout", "grpc", "shared_data", "shared_queue", "metrics",
    "properties", "foreign_function", "context", "lifecycle", "misc",
}
PROVIDERS = {"proxy-wasm", "cpp-host", "envoy"}
KINDS = {"allocator", "start", "callback"}
ENUM_KEYS = [
    "status", "log_level", "map_type", "buffer_type", "stream_type", "action",
    "metric_type", "peer_type", "grpc_status", "wasi_errno",
]
ENUM_SIZES = {  # contiguous 0..n-1
    "status": 13, "log_level": 7, "map_type": 8, "buffer_type": 9, "stream_type": 4,
    "action": 2, "metric_type": 3, "peer_type": 3, "grpc_status": 17,
}
WASI_ERRNO = {
    "SUCCESS": 0, "BADF": 8, "NOTDIR": 20, "FAULT": 21, "INVAL": 28, "NOENT": 44,
    "NOSYS": 52, "NOTSUP": 58, "NOTCAPABLE": 76,
}
I64_IMPORTS = {"proxy_increment_metric": ["i32", "i64"], "proxy_record_metric": ["i32", "i64"]}
ONLY_0_1_0 = {
    "proxy_get_configuration", "proxy_continue_request", "proxy_continue_response",
    "proxy_clear_route_cache",
}
ONLY_0_2_X = {"proxy_continue_stream", "proxy_close_stream"}
WASI_I64 = {  # name -> params, for every row that has an i64 (docs/abi-notes.md §9)
    "fd_seek": ["i32", "i64", "i32", "i32"],
    "path_open": ["i32", "i32", "i32", "i32", "i32", "i64", "i64", "i32", "i32"],
    "clock_time_get": ["i32", "i64", "i32"],
    "fd_fdstat_set_rights": ["i32", "i64", "i64"],
    "fd_advise": ["i32", "i64", "i64", "i32"],
    "fd_allocate": ["i32", "i64", "i64"],
    "fd_filestat_set_size": ["i32", "i64"],
    "fd_filestat_set_times": ["i32", "i64", "i64", "i32"],
    "fd_pread": ["i32", "i32", "i32", "i64", "i32"],
    "fd_pwrite": ["i32", "i32", "i32", "i64", "i32"],
    "fd_readdir": ["i32", "i32", "i32", "i64", "i32"],
    "path_filestat_set_times": ["i32", "i32", "i32", "i32", "i64", "i64", "i32"],
}

errors: list[str] = []


def err(msg: str) -> None:
    errors.append(msg)


def load(name: str) -> dict:
    return json.loads((HERE / name).read_text(encoding="utf-8"))


def check_sig(where: str, entry: dict) -> None:
    for key in ("params", "results"):
        for t in entry[key]:
            if t not in TYPES:
                err(f"{where}: {entry['name']}: bad type {t!r} in {key}")
    if len(entry["results"]) > 1:
        err(f"{where}: {entry['name']}: more than one result")


def no_dups(where: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            err(f"{where}: duplicate name {n}")
        seen.add(n)


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def check_version(v: str, doc: dict) -> None:
    w = f"abi-{v}.json"
    if set(doc) != {"abi_version", "marker_export", "imports", "exports", "enums"}:
        err(f"{w}: unexpected top-level keys {sorted(doc)}")
    if doc["abi_version"] != v:
        err(f"{w}: abi_version {doc['abi_version']!r}")
    if doc["marker_export"] != "proxy_abi_version_" + v.replace(".", "_"):
        err(f"{w}: marker_export {doc['marker_export']!r}")
    no_dups(f"{w} imports", [e["name"] for e in doc["imports"]])
    no_dups(f"{w} exports", [e["name"] for e in doc["exports"]])
    for e in doc["imports"]:
        if set(e) != {"module", "name", "params", "results", "group", "provider"}:
            err(f"{w}: import {e.get('name')}: keys {sorted(e)}")
            continue
        check_sig(w, e)
        if e["module"] != "env":
            err(f"{w}: {e['name']}: module {e['module']!r}")
        if e["group"] not in GROUPS:
            err(f"{w}: {e['name']}: group {e['group']!r}")
        if e["provider"] not in PROVIDERS:
            err(f"{w}: {e['name']}: provider {e['provider']!r}")
        if e["name"].startswith("proxy_") != (e["provider"] == "proxy-wasm"):
            err(f"{w}: {e['name']}: provider {e['provider']!r} does not match the name")
        if "i64" in e["params"] + e["results"] and e["name"] not in I64_IMPORTS:
            err(f"{w}: {e['name']}: unexpected i64")
        if e["name"] in I64_IMPORTS and e["params"] != I64_IMPORTS[e["name"]]:
            err(f"{w}: {e['name']}: params {e['params']}")
        if e["results"] != (["i32"] if e["name"] != "emscripten_notify_memory_growth" else []):
            err(f"{w}: {e['name']}: results {e['results']}")
    imports = {e["name"] for e in doc["imports"]}
    for extra in ("pthread_equal", "emscripten_notify_memory_growth", "envoy_resolve_dns"):
        if extra not in imports:
            err(f"{w}: missing import {extra}")
    for e in doc["exports"]:
        allowed = {"name", "params", "results", "kind"} | ({"provider"} if "provider" in e else set())
        if set(e) != allowed:
            err(f"{w}: export {e.get('name')}: keys {sorted(e)}")
            continue
        check_sig(w, e)
        if "i64" in e["params"] + e["results"]:
            err(f"{w}: export {e['name']}: unexpected i64")
        if e["kind"] not in KINDS:
            err(f"{w}: export {e['name']}: kind {e['kind']!r}")
        if e["name"].startswith("envoy_") != (e.get("provider") == "envoy"):
            err(f"{w}: export {e['name']}: provider {e.get('provider')!r}")
    exports = by_name(doc["exports"])
    for name, kind in (("malloc", "allocator"), ("proxy_on_memory_allocate", "allocator"),
                       ("_initialize", "start"), ("_start", "start"), ("main", "start"),
                       ("__main_void", "start")):
        if exports.get(name, {}).get("kind") != kind:
            err(f"{w}: export {name} missing or not kind {kind}")
    hp = 2 if v == "0.1.0" else 3
    for name in ("proxy_on_request_headers", "proxy_on_response_headers"):
        if exports.get(name, {}).get("params") != ["i32"] * hp:
            err(f"{w}: {name} should take {hp} params")
    if ("proxy_on_foreign_function" in exports) != (v != "0.1.0"):
        err(f"{w}: proxy_on_foreign_function presence wrong")

    enums = doc["enums"]
    want = [k for k in ENUM_KEYS if k != "stream_type" or v != "0.1.0"]
    if sorted(enums) != sorted(want):
        err(f"{w}: enum keys {sorted(enums)} != {sorted(want)}")
    for key, values in enums.items():
        if any(not n.isupper() or " " in n for n in values):
            err(f"{w}: enum {key}: names must be UPPER_SNAKE")
        if len(set(values.values())) != len(values):
            err(f"{w}: enum {key}: duplicate values")
        if key in ENUM_SIZES and sorted(values.values()) != list(range(ENUM_SIZES[key])):
            err(f"{w}: enum {key}: values {sorted(values.values())}")
    if enums.get("wasi_errno") != WASI_ERRNO:
        err(f"{w}: wasi_errno differs from docs/abi-notes.md §4.6")
    if enums["log_level"].get("OFF") != 6:
        err(f"{w}: log_level OFF must be 6")
    for name, num in (("BAD_EXPRESSION", 5), ("RESULT_MISMATCH", 9), ("BROKEN_CONNECTION", 11)):
        if enums["status"].get(name) != num:
            err(f"{w}: status {name} must be {num}")


def check_differences(docs: dict[str, dict]) -> list[str]:
    imp = {v: by_name(d["imports"]) for v, d in docs.items()}
    exp = {v: by_name(d["exports"]) for v, d in docs.items()}
    report = []

    # 0.2.1 = 0.2.0 + proxy_get_log_level (entries identical otherwise)
    added = set(imp["0.2.1"]) - set(imp["0.2.0"])
    removed = set(imp["0.2.0"]) - set(imp["0.2.1"])
    if added != {"proxy_get_log_level"} or removed:
        err(f"0.2.0 -> 0.2.1 imports: +{sorted(added)} -{sorted(removed)}")
    for n in set(imp["0.2.0"]) & set(imp["0.2.1"]):
        if imp["0.2.0"][n] != imp["0.2.1"][n]:
            err(f"0.2.0 vs 0.2.1: {n} entry differs")
    if docs["0.2.0"]["exports"] != docs["0.2.1"]["exports"]:
        err("0.2.0 vs 0.2.1: exports differ")
    if docs["0.2.0"]["enums"] != docs["0.2.1"]["enums"]:
        err("0.2.0 vs 0.2.1: enums differ")
    report.append(f"imports 0.2.1 - 0.2.0 = {sorted(added)}; 0.2.0 - 0.2.1 = {sorted(removed)}")

    # 0.1.0 vs 0.2.0
    only01 = set(imp["0.1.0"]) - set(imp["0.2.0"])
    only02 = set(imp["0.2.0"]) - set(imp["0.1.0"])
    if only01 != ONLY_0_1_0 or only02 != ONLY_0_2_X:
        err(f"0.1.0 vs 0.2.0 imports: only 0.1.0 {sorted(only01)}, only 0.2.0 {sorted(only02)}")
    for n in set(imp["0.1.0"]) & set(imp["0.2.0"]):
        if imp["0.1.0"][n] != imp["0.2.0"][n]:
            err(f"0.1.0 vs 0.2.0: import {n} entry differs")
    report.append(f"imports 0.1.0 - 0.2.0 = {sorted(only01)}")
    report.append(f"imports 0.2.0 - 0.1.0 = {sorted(only02)}")

    e_only01 = set(exp["0.1.0"]) - set(exp["0.2.0"])
    e_only02 = set(exp["0.2.0"]) - set(exp["0.1.0"])
    changed = sorted(n for n in set(exp["0.1.0"]) & set(exp["0.2.0"])
                     if exp["0.1.0"][n] != exp["0.2.0"][n])
    if e_only01 or e_only02 != {"proxy_on_foreign_function"}:
        err(f"0.1.0 vs 0.2.0 exports: only 0.1.0 {sorted(e_only01)}, only 0.2.0 {sorted(e_only02)}")
    if changed != ["proxy_on_request_headers", "proxy_on_response_headers"]:
        err(f"0.1.0 vs 0.2.0 exports with different types: {changed}")
    report.append(f"exports 0.2.0 - 0.1.0 = {sorted(e_only02)}; 0.1.0 - 0.2.0 = {sorted(e_only01)}")
    report.append(f"exports with changed type 0.1.0 -> 0.2.0 = {changed}")

    e01, e02 = docs["0.1.0"]["enums"], docs["0.2.0"]["enums"]
    e_diff = sorted(set(e01) ^ set(e02))
    if e_diff != ["stream_type"] or any(e01[k] != e02[k] for k in e01):
        err(f"0.1.0 vs 0.2.0 enums differ beyond stream_type: {e_diff}")
    report.append(f"enums 0.1.0 vs 0.2.0: symmetric difference = {e_diff}")
    return report


def check_wasi(doc: dict) -> None:
    w = "wasi.json"
    if set(doc) != {"modules", "functions"}:
        err(f"{w}: top-level keys {sorted(doc)}")
    if doc["modules"] != ["wasi_snapshot_preview1", "wasi_unstable"]:
        err(f"{w}: modules {doc['modules']}")
    names = [f["name"] for f in doc["functions"]]
    no_dups(w, names)
    fns = by_name(doc["functions"])
    for f in doc["functions"]:
        if set(f) != {"name", "params", "results", "behaviour", "since"}:
            err(f"{w}: {f.get('name')}: keys {sorted(f)}")
            continue
        check_sig(w, f)
        if f["since"] not in {"★", "427", "533"}:
            err(f"{w}: {f['name']}: since {f['since']!r}")
        if not f["behaviour"] or "\n" in f["behaviour"]:
            err(f"{w}: {f['name']}: behaviour must be one line")
        if "i64" in f["params"] and f["name"] not in WASI_I64:
            err(f"{w}: {f['name']}: unexpected i64")
        if f["name"] in WASI_I64 and f["params"] != WASI_I64[f["name"]]:
            err(f"{w}: {f['name']}: params {f['params']}")
        want_results = [] if f["name"] == "proc_exit" else ["i32"]
        if f["results"] != want_results:
            err(f"{w}: {f['name']}: results {f['results']}")
    fixed = {
        "path_link": ["i32"] * 6, "path_symlink": ["i32"] * 4, "proc_exit": ["i32"],
        "sched_yield": [],
    }
    for n, params in fixed.items():
        if fns.get(n, {}).get("params") != params:
            err(f"{w}: {n}: params should be {params}")
    star = {
        "fd_write", "fd_read", "fd_seek", "fd_close", "fd_fdstat_get", "environ_get",
        "environ_sizes_get", "args_get", "args_sizes_get", "clock_time_get", "random_get",
        "proc_exit", "path_open", "fd_prestat_get", "fd_prestat_dir_name",
    }
    if {n for n, f in fns.items() if f["since"] == "★"} != star:
        err(f"{w}: the ★ set differs from the pre-2024 list in docs/abi-notes.md §9")
    if {n for n, f in fns.items() if f["since"] == "427"} != {
        "sched_yield", "poll_oneoff", "fd_fdstat_set_flags"
    }:
        err(f"{w}: the 427 set differs from docs/abi-notes.md §9")
    if len(fns) != 45:
        err(f"{w}: {len(fns)} functions, expected 45 (rows of docs/abi-notes.md §9, grouped rows split)")


def main() -> int:
    docs = {v: load(f"abi-{v}.json") for v in VERSIONS}
    for v, d in docs.items():
        check_version(v, d)
    report = check_differences(docs)
    wasi = load("wasi.json")
    check_wasi(wasi)
    for v, d in docs.items():
        print(f"abi-{v}.json: {len(d['imports'])} env imports, {len(d['exports'])} exports")
    print(f"wasi.json: {len(wasi['functions'])} functions x {len(wasi['modules'])} modules")
    for line in report:
        print(line)
    for e in errors:
        print("ERROR:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
