"""Human-readable lines for what make, verify, inspect, diff and apply did.

Every function here renders the same dicts that ``--json`` prints, so text and JSON never disagree.
"""

from __future__ import annotations

import json
import sys


from deltaimg.bundle.manifest import STATS_FIELDS, ImagePair, ImageRecord, Manifest, Method, image_name
from deltaimg.errors import printable
from deltaimg.units import human_size

ECOSYSTEM_TITLES = {"deb": "Debian packages", "apk": "Alpine packages", "python": "Python distributions"}
CHANGE_ORDER = ("upgraded", "downgraded", "changed", "added", "removed")
DEFAULT_LIMIT = 20


def arrow() -> str:
    """The arrow "→", or "->" where stdout cannot encode it."""
    try:
        "→".encode(sys.stdout.encoding or "ascii")
        return "→"
    except (UnicodeEncodeError, LookupError):
        return "->"


def signed_size(n: int) -> str:
    return ("+" if n >= 0 else "-") + human_size(abs(n))


def name_of(image: dict) -> str:
    """How messages name an image of make's summary (see :func:`deltaimg.bundle.manifest.image_name`)."""
    return image_name(image.get("tags"), image["image_id"])


def image_line(image: ImageRecord, layers: int | None = None) -> str:
    """All tags, the short ID, the layer count (when known) and when it was built."""
    tags = " ".join(image.tags) or "(untagged)"
    count = f", {layers} layers" if layers is not None else ""
    return f"{tags} {image.image_id[:19]}{count}, created {image.created}"


def ratio_line(bundle_size: int, full_size: int) -> str:
    ratio = min(full_size, 1000 ** 5) / bundle_size if bundle_size else 0  # as human_size caps it
    return (f"bundle {human_size(bundle_size)} vs full image {human_size(full_size)} "
            f"(docker save): {ratio:.1f}x smaller")


# --------------------------------------------------------------------------- bundles


def how_applied(layer: dict) -> str:
    """How apply gets a layer: referenced (base layer), repeated (an earlier target layer),
    rebuilt (a delta against the base's content) or shipped (a delta that uses nothing of the base)."""
    method = layer["method"]
    if method == Method.BASE:
        return "referenced"
    if method == Method.REPEAT:
        return "repeated"
    if method == Method.SHARED:
        return "shared"
    stats = layer.get("stats") or {}
    reused = sum(stats.get(key, 0) for key in ("identical", "bsdiff", "zstd_delta", "headers_from_old"))
    return "shipped" if stats and not reused else "rebuilt"


def manifest_layers(manifest: Manifest, pair: ImagePair) -> list[dict]:
    """A pair's layers as make's summary lists them, with what the manifest says elsewhere
    filled in: a delta's payload size, its stats as a dict, and a repeated layer's size. The
    manifest names no diff_ids (they are in the image configs); make's own summary has them."""
    layers: list[dict] = []
    for layer in pair.layers:
        full: dict = {"method": layer.method.value, "size": layer.size}
        if layer.method is Method.BASE:
            full["base_layer"] = layer.base_layer
        elif layer.method is Method.REPEAT:
            full["of"] = layer.of
        elif layer.method is Method.SHARED:
            full["image"], full["of"] = layer.image, layer.of
        else:
            full["payload"] = layer.payload
            full["payload_size"] = manifest.payload(layer.payload).size  # type: ignore[arg-type, union-attr]
            if layer.stats:
                full["stats"] = dict(zip(STATS_FIELDS, layer.stats))
        layers.append(full)
    return layers


def full_image_size(manifest: Manifest) -> int:
    """The bytes of the images' distinct layers, about what ``docker save`` writes of each."""
    return sum(sum({layer.key(position): layer.size for position, layer in enumerate(pair.layers)}.values())
               for pair in manifest.images)


def layer_lines(layers: list[dict]) -> list[str]:
    """One line per layer (and its counts, when it was rebuilt) of make's summary or :func:`manifest_layers`."""
    lines = []
    for position, layer in enumerate(layers):
        how = how_applied(layer)
        what = {
            "referenced": f"referenced: base layer {layer.get('base_layer')}",
            "repeated": f"repeated: same as layer {layer.get('of')}",
            "shared": f"shared: same as layer {layer.get('of')} of image {layer.get('image')}, shipped once",
            "rebuilt": f"rebuilt from a {human_size(layer.get('payload_size', 0))} delta",
            "shipped": f"shipped: {human_size(layer.get('payload_size', 0))} of new content",
        }[how]
        diff_id = f"{layer['diff_id'][:19]} " if "diff_id" in layer else ""
        lines.append(f"  layer {position}: {diff_id}{human_size(layer['size'])} {what}")
        stats = layer.get("stats")
        if stats and how == "rebuilt":
            lines.append(
                "           {files} files: {identical} unchanged, {bsdiff} bsdiff, {zstd_delta} zstd delta, "
                "{literal} new; {headers_from_old} headers from the base image".format(**stats)
            )
    return lines


def payload_bytes(manifest: Manifest, layers: list[dict], bundle_size: int) -> dict[str, int]:
    """Bytes of the bundle by kind: layer deltas, shipped layers, the configs, the manifest and signature."""
    configs = [manifest.payload(pair.config) for pair in manifest.images]
    sizes = {"delta": 0, "shipped": 0, "config": sum(config.size for config in configs if config),
             "header": bundle_size - manifest.payload_area}
    for layer in layers:
        if layer["method"] == Method.DELTA:
            sizes["delta" if how_applied(layer) == "rebuilt" else "shipped"] += layer["payload_size"]
    return sizes


def payload_line(sizes: dict[str, int]) -> str:
    parts = [f"{human_size(sizes['delta'])} layer deltas"]
    if sizes["shipped"]:
        parts.append(f"{human_size(sizes['shipped'])} shipped layers")
    parts += [f"{human_size(sizes['config'])} config", f"{human_size(sizes['header'])} manifest and signature"]
    return "payloads: " + ", ".join(parts)


def inspection(bundle: str, size: int, key_id: str | None, verified: bool, checked: str,
               manifest: Manifest, version: int) -> tuple[dict, list[str]]:
    """``deltaimg inspect``: (the JSON object, the text lines). The section on package and config
    changes is there when the bundle's manifest has one (bundles made before it have none). A bundle
    of several images lists each under ``images``, as its manifest does."""
    pairs = [manifest_layers(manifest, pair) for pair in manifest.images]
    data = {"bundle": bundle, "size": size, "signer_key_id": key_id, "verified": verified, **manifest.document,
            "version": version, "payload_bytes": payload_bytes(manifest, [lyr for layers in pairs for lyr in layers], size)}
    lines = [f"{bundle}: {human_size(size)}, format {version}, made by {manifest.tool} at {manifest.created}",
             f"  signed by key {key_id}: {checked}"]
    if len(pairs) == 1:
        data.update(layers=pairs[0], layer_plan=[how_applied(layer) for layer in pairs[0]])
    else:
        data["images"] = [{**image, "layers": layers, "layer_plan": [how_applied(layer) for layer in layers]}
                          for image, layers in zip(manifest.document["images"], pairs)]
        lines.append(f"  {len(pairs)} images, applied together as one update:")
    for index, (pair, layers) in enumerate(zip(manifest.images, pairs)):
        indent = "  " if len(pairs) == 1 else "    "
        if len(pairs) > 1:
            lines.append(f"  image {index}:")
        lines += [f"{indent}base:   {image_line(pair.base)}", f"{indent}target: {image_line(pair.target, len(layers))}",
                  *(indent[2:] + line for line in layer_lines(layers))]
        if pair.changes is not None and len(pairs) > 1:
            lines += [indent + line for line in change_lines(pair.changes)]
    lines += ["  " + payload_line(data["payload_bytes"]), "  " + ratio_line(size, full_image_size(manifest))]
    if len(pairs) == 1 and manifest.changes is not None:
        lines += ["  " + line for line in change_lines(manifest.changes)]
    return data, lines


def made_lines(written: str, made: dict) -> list[str]:
    """``deltaimg make``'s lines for its summary (one pair at its top, or several in ``images``)."""
    images = made.get("images") or [made]
    lines = [f"{written}: {name_of(made['base'])} -> {name_of(made['target'])}" if len(images) == 1
             else f"{written}: {len(images)} images, applied together as one update"]
    for index, image in enumerate(images):
        indent = "" if len(images) == 1 else "  "
        if len(images) > 1:
            lines.append(f"  image {index}: {name_of(image['base'])} -> {name_of(image['target'])}")
        lines += [indent + line for line in layer_lines(image["layers"])]
        if len(images) > 1:
            lines += ["    " + line for line in change_lines(image["changes"])]
    lines.append(ratio_line(made["bundle_size"], made["full_image_size"]))
    if len(images) == 1:
        lines += change_lines(made["changes"])
    return lines


# --------------------------------------------------------------------------- packages and config


def package_lines(packages: list[dict], databases: list[str]) -> list[str]:
    """``packages: 1 upgraded`` then, per ecosystem, ``openssl 3.0.20-1 → 3.0.22-1``."""
    if not packages:
        if not databases:
            return ["packages: no package database found"]
        return [f"packages: no changes ({', '.join(ECOSYSTEM_TITLES[d] for d in databases)} read)"]
    counts = [f"{sum(p['change'] == kind for p in packages)} {kind}" for kind in CHANGE_ORDER
              if any(p["change"] == kind for p in packages)]
    lines = ["packages: " + ", ".join(counts)]
    for ecosystem, title in ECOSYSTEM_TITLES.items():
        mine = [p for p in packages if p["ecosystem"] == ecosystem]
        if mine:
            lines.append(f"  {title}:")
            lines += [f"    {_package(p)}" for p in mine]
    return lines


def _package(change: dict) -> str:
    if change["change"] == "added":
        return f"{change['name']} {change['new']} (added)"
    if change["change"] == "removed":
        return f"{change['name']} {change['old']} (removed)"
    note = "" if change["change"] == "upgraded" else f" ({change['change']})"
    return f"{change['name']} {change['old']} {arrow()} {change['new']}{note}"


def config_lines(changes: list[dict]) -> list[str]:
    """``Env APP_VERSION: "1.0" → "2.0"``, ``Cmd: [...] → [...]``; unset values show as (unset)."""
    if not changes:
        return ["config: no changes"]
    lines = [f"config: {len(changes)} change{'s' if len(changes) != 1 else ''}"]
    for change in changes:
        key = change["key"] + (f" {change['name']}" if change["name"] is not None else "")
        lines.append(f"  {key}: {_value(change['old'])} {arrow()} {_value(change['new'])}")
    return lines


def _value(value: object) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def change_lines(changes: dict) -> list[str]:
    """The package and config sections of a diff report or of a manifest's ``changes``."""
    return package_lines(changes["packages"], changes["package_databases"]) + config_lines(changes["config"])


# --------------------------------------------------------------------------- diff


def _limited(lines: list[str], limit: int, what: str) -> list[str]:
    if not limit or len(lines) <= limit:
        return lines
    return lines[:limit] + [f"  ... and {len(lines) - limit} more {what} (--limit 0 or --json shows all)"]


def _file(record: dict, size_key: str = "size") -> str:
    """A file's size; what other kinds of entry are, with their target."""
    if record["kind"] == "file":
        return human_size(record[size_key])
    return f"({record['kind']} {record['target']})" if record.get("target") else f"({record['kind']})"


def diff_lines(report: dict, limit: int = DEFAULT_LIMIT) -> list[str]:
    """``deltaimg diff`` as text: at most ``limit`` files per list (0: all)."""
    old, new, summary = report["old"], report["new"], report["summary"]
    to = arrow()
    statuses = [layer["status"] for layer in report["layers"]]
    lines = [
        f"{name_of(old)} {to} {name_of(new)}",
        f"layers: {old['layers']} {to} {new['layers']}, {human_size(old['size'])} {to} {human_size(new['size'])}; "
        f"{statuses.count('reused')} reused, {statuses.count('changed')} changed, {statuses.count('new')} new, "
        f"{len(report['dropped_layers'])} dropped",
    ]
    for layer in report["layers"]:
        origin = "" if layer["old_index"] is None else f" (old layer {layer['old_index']})"
        lines.append(f"  {layer['index']} {layer['diff_id'][:19]} {human_size(layer['size'])} {layer['status']}{origin}")
    for layer in report["dropped_layers"]:
        lines.append(f"  dropped: old layer {layer['index']} {layer['diff_id'][:19]} {human_size(layer['size'])}")
    directories = report["directories"]
    lines.append(
        f"files: {summary['added']} added ({human_size(summary['added_bytes'])}), "
        f"{summary['removed']} removed ({human_size(summary['removed_bytes'])}), "
        f"{summary['modified']} modified ({signed_size(summary['modified_bytes'])}); directories: "
        f"{len(directories['added'])} added, {len(directories['removed'])} removed, {len(directories['modified'])} modified"
    )
    files = report["files"]
    lines += _limited([f"  + {r['path']} {_file(r)}" + (f", moved from {r['moved_from']}" if "moved_from" in r else "")
                       for r in files["added"]], limit, "added")
    lines += _limited([f"  - {r['path']} {_file(r)}" for r in files["removed"]], limit, "removed")
    lines += _limited([f"  ~ {r['path']} {_modification(r)}" for r in files["modified"]], limit, "modified")
    return lines + change_lines(report)


def _modification(record: dict) -> str:
    """``6.4 KB (+39 B; content)``, ``(symlink; target /usr/bin/vi → /usr/bin/nano)``."""
    what = [f"target {record['old_target']} {arrow()} {record['new_target']}" if change == "target" else change
            for change in record["changes"]]
    if record["kind"] != "file":
        return f"({record['kind']}; {', '.join(what)})"
    delta = record["new_size"] - record["old_size"]
    return f"{human_size(record['new_size'])} ({', '.join(([signed_size(delta)] if delta else []) + what)})"


def status(state_dir: str, attempts: list, total: int, running: int | None,
           kept_receipts: list[dict] | None = None, pushes: list[dict] | None = None) -> tuple[dict, list[str]]:
    """``deltaimg status``: the journal's attempts (deltaimg.journal.Attempt), newest last; the
    receipts kept in the journal because the stick could not take them; the last push into a registry."""
    rows = [_attempt(a) for a in attempts]
    kept = [{"time": r.get("time"), "folder": r["folder"], "reason": r["reason"], "receipt": r["receipt"]}
            for r in kept_receipts or []]
    last_push = _push(pushes[-1]) if pushes else None
    data = {"state_dir": state_dir, "running": running, "attempts": rows, "total_attempts": total,
            "kept_receipts": kept, "last_push": last_push, "total_pushes": len(pushes or [])}
    lines = [f"state directory {state_dir}: {total} update(s) journalled"
             + (f", the last {len(rows)} shown" if len(rows) < total else "")]
    if running is not None:
        lines.append(f"a run is in progress now (pid {running or '?'})")
    for row in rows:
        swapped = ", ".join(c.get("name", "?") for c in row["containers"]) or "no container"
        lines.append(f"{row['time']}  {row['outcome']:<15} {row['from']} {arrow()} {row['to']}  "
                     f"[{swapped}] key {row['key_id']} {row['bundle']}")
        if row["message"]:
            lines.append(f"    {row['message']}")
    if last_push:
        services = ", ".join(f"{s['name']} {s.get('outcome', '?')}" for s in last_push["services"])
        lines.append(f"last registry push of {len(pushes or [])}: {last_push['time']}  {last_push['outcome']:<15} "
                     f"{last_push['from']} {arrow()} {last_push['to']}  {last_push['registry']}"
                     + (f"@{last_push['digest']}" if last_push["digest"] else "") + f" {last_push['bundle']}"
                     + (f"; Swarm services: {services}" if services else ""))
        if last_push["message"]:
            lines.append(f"    {last_push['message']}")
    if kept:
        last = kept[-1]
        lines.append(f"{len(kept)} receipt(s) kept in the journal, as the stick could not take them; the last, "
                     f"{last['time']}: {last['receipt'].get('result')} (cannot write {last['folder']}: {last['reason']})")
    return data, lines


def receipts(folder: str, rows: list[dict], left_out: int) -> tuple[dict, list[str]]:
    """``deltaimg receipts``: one row per receipt (deltaimg.apply.receipts.read_one), host by host."""
    hosts = {row["host"] for row in rows if row["host"] is not None}
    unreadable = sum(row["result"] == "unreadable" for row in rows)
    data = {"folder": folder, "receipts": rows, "hosts": len(hosts), "unreadable": unreadable, "left_out": left_out}
    lines = [f"{folder}: {len(rows)} receipt(s) from {len(hosts)} host(s)"
             + (f", {unreadable} unreadable" if unreadable else "")
             + (f"; {left_out} more not read (more than {len(rows)} files)" if left_out else "")]
    table = [("HOST", "MACHINE ID", "BUNDLE", "RESULT", "EXIT", "BEFORE -> AFTER", "TIME")]
    for row in rows:
        if row["result"] == "unreadable":
            table.append((f"({row['file']})", "-", "-", "unreadable", "-", "-", row["message"]))
            continue
        table.append((row["host"], (row["machine_id"] or "-")[:12], row["bundle"] or "-", row["result"],
                      str(row["exit_code"]), f"{_short(row['before'])} -> {_short(row['after'])}", row["time"]))
    cells = [[_cell(value, 40 if column < len(line) - 1 else 300) for column, value in enumerate(line)] for line in table]
    widths = [max(len(line[column]) for line in cells) for column in range(len(table[0]) - 1)]
    lines += ["  ".join(value.ljust(width) for value, width in zip(line, widths)) + "  " + line[-1] for line in cells]
    return data, lines


def _short(image_id: str | None) -> str:
    return image_id.split(":", 1)[-1][:12] if image_id else "-"


def _cell(value: str, width: int) -> str:
    """A table cell: escaped (it comes from a host's receipt), cut to ``width``."""
    text = printable(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _push(record: dict) -> dict:
    """A journal ``push`` record (deltaimg.apply.site_push) as ``status`` shows it."""
    return {"time": record.get("time"), "outcome": record["outcome"], "registry": record["registry"],
            "digest": record.get("digest"), "message": record.get("message"),
            "from": _journal_name(record.get("from")), "to": _journal_name(record.get("to")),
            "from_image": (record.get("from") or {}).get("image_id"), "to_image": (record.get("to") or {}).get("image_id"),
            "bundle": (record.get("bundle") or {}).get("path"),
            "services": [s for s in record.get("services") or [] if isinstance(s, dict)]}


def _attempt(attempt) -> dict:
    begin, closed = attempt.begin, attempt.closed or {}
    bundle = begin.get("bundle") or {}
    if attempt.interrupted:
        outcome = "interrupted"
    else:
        outcome = closed.get("outcome") or closed.get("type", "?")
    return {"id": attempt.id, "time": begin.get("time"), "ended": closed.get("time"), "outcome": outcome,
            "bundle": bundle.get("path"), "bundle_sha256": bundle.get("sha256"), "key_id": bundle.get("key_id"),
            "from": _journal_names(begin, "from"), "to": _journal_names(begin, "to"),
            "from_image": (begin.get("from") or {}).get("image_id"), "to_image": (begin.get("to") or {}).get("image_id"),
            "containers": closed.get("containers") or [], "message": closed.get("message") or "; ".join(attempt.notes)}


def _journal_names(begin: dict, which: str) -> str:
    """The ``from`` or ``to`` image of an attempt; of each image, joined, for a bundle of several."""
    images = begin.get("images")
    if isinstance(images, list) and images:
        return ", ".join(_journal_name(image.get(which) if isinstance(image, dict) else None) for image in images)
    return _journal_name(begin.get(which))


def _journal_name(image: object) -> str:
    if not isinstance(image, dict) or not isinstance(image.get("image_id"), str):
        return "?"
    return name_of(image)
