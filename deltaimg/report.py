"""Human-readable lines for what make, verify, inspect and apply did."""

from __future__ import annotations


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def name_of(image: dict) -> str:
    tags = image.get("tags") or []
    return f"{tags[0] if tags else '(untagged)'} {image['image_id'][:19]}"


def ratio_line(bundle_size: int, full_size: int) -> str:
    ratio = full_size / bundle_size if bundle_size else 0
    return (f"bundle {human_size(bundle_size)} vs full image {human_size(full_size)} "
            f"(docker save): {ratio:.1f}x smaller")


def layer_lines(manifest: dict) -> list[str]:
    lines = []
    for position, layer in enumerate(manifest["layers"]):
        method = layer["method"]
        what = {
            "base": f"reused from base layer {layer.get('base_layer')}",
            "repeat": f"same as layer {layer.get('of')}",
            "delta": f"rebuilt from a {human_size(layer.get('payload_size', 0))} delta",
        }.get(method, method)
        lines.append(f"  layer {position}: {layer['diff_id'][:19]} {human_size(layer['size'])} {what}")
        stats = layer.get("stats")
        if stats:
            lines.append(
                "           {files} files: {identical} unchanged, {bsdiff} bsdiff, {zstd_delta} zstd delta, "
                "{literal} new; {headers_from_old} headers from the old image".format(**stats)
            )
    return lines
