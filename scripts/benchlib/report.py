"""The results as markdown tables, a log-scale chart and docs/benchmarks.md."""

from __future__ import annotations

import datetime
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from benchlib.methods import Shipped
from benchlib.proc import Cost, run

MEMORY_TARGET_MIB = 512
REBUILD_TARGET = 0.01  # of the full image's zstd size


@dataclass(frozen=True)
class Applied:
    method: str
    cost: Cost


@dataclass(frozen=True)
class Outcome:
    """Everything measured for one scenario."""

    name: str
    summary: str
    note: str
    new_image_size: int  # the docker save archive
    layers: int
    changed: list[tuple[int, int]]  # (position, uncompressed size) of each layer the old image lacks
    config_zstd: int  # the new image config with zstd -19
    shipped: list[Shipped]  # deltaimg first
    applied: list[Applied]  # deltaimg into an archive, into the engine (store, docker save), docker load
    deltaimg_layers: list[str]  # what make did with each changed layer

    @property
    def deltaimg(self) -> Shipped:
        return self.shipped[0]

    @property
    def bundle_overhead(self) -> int:
        """The bundle's bytes besides its layer payloads: header, manifest, signature, config."""
        return self.deltaimg.size - sum(self.deltaimg.layer_sizes)

    def method(self, name: str) -> Shipped:
        return next(s for s in self.shipped if s.method == name)


# -- formatting -----------------------------------------------------------------------------
def size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s / 60:.1f} min"


def memory(cost: Cost) -> str:
    return "in dockerd" if cost.peak_kib is None else f"{cost.peak_kib / 1024:.0f} MiB"


def times(big: float, small: float) -> str:
    """How many times ``small`` fits in ``big``: '1.04x', '3.2x', '250x'."""
    factor = big / small if small else float("inf")
    digits = 2 if factor < 1.1 else (1 if factor < 100 else 0)
    return f"{factor:.{digits}f}x"


def versus(value: float, reference: float, more: str, less: str) -> str:
    """``value`` against ``reference``: '1.00', '1.8x larger', '3.2x smaller'."""
    if value == reference:
        return "1.00"
    return f"{times(value, reference)} {more}" if value > reference else f"{times(reference, value)} {less}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def layer_stats(manifest: dict) -> list[str]:
    """One line per layer deltaimg encoded: sizes and how its files were coded."""
    lines = []
    for position, layer in enumerate(manifest["layers"]):
        if layer["method"] != "delta":
            continue
        stats = layer["stats"]
        lines.append(f"layer {position}: {size(layer['size'])} -> {size(layer['payload_size'])}; {stats['files']} files: "
                     f"{stats['identical']} unchanged, {stats['bsdiff']} bsdiff, {stats['zstd_delta']} zstd delta, "
                     f"{stats['literal']} literal ({size(stats['literal_bytes'])} of literal stream); "
                     f"{stats['headers_from_old']} of {stats['entries']} tar headers from the old image")
    return lines


# -- tables ---------------------------------------------------------------------------------
def scenario_tables(outcome: Outcome) -> list[str]:
    reference = outcome.deltaimg
    made = [[f"**{s.method}**" if s is reference else s.method, s.what, size(s.size),
             "1.00 (reference)" if s is reference else versus(s.size, reference.size, "larger", "smaller"),
             seconds(s.cost.seconds),
             "1.00" if s is reference else versus(s.cost.seconds, reference.cost.seconds, "slower", "faster"),
             memory(s.cost)] for s in outcome.shipped]
    engine = outcome.applied[1]
    applied = [[a.method, seconds(a.cost.seconds),
                "1.00 (reference)" if a is engine else versus(a.cost.seconds, engine.cost.seconds, "slower", "faster"),
                memory(a.cost)] for a in outcome.applied]
    return [f"### {outcome.name}", "", f"{outcome.summary}. {outcome.note}.", "",
            f"New image: {size(outcome.new_image_size)} as `docker save` output, {outcome.layers} layers, "
            f"{len(outcome.changed)} of them not in the old image "
            f"({size(sum(n for _, n in outcome.changed))} uncompressed).", "",
            *_table(["method", "what travels", "size", "vs deltaimg", "make / encode time", "vs deltaimg make",
                     "peak memory"], made), "",
            *_table(["on the target host", "time", "vs deltaimg apply (engine)", "peak memory"], applied), "",
            *per_layer_table(outcome), "",
            "What `deltaimg make` did with the changed layers:", "",
            *(f"- {line}" for line in outcome.deltaimg_layers), ""]


def per_layer_table(outcome: Outcome) -> list[str]:
    """Each changed layer's size per method; deltaimg's remainder is its manifest, signature and config."""
    layered = [s for s in outcome.shipped if s.layer_sizes]
    rows = [[f"layer {position}", size(raw), *(size(s.layer_sizes[number]) for s in layered)]
            for number, (position, raw) in enumerate(outcome.changed)]
    rows.append(["header, manifest, signature, config", "", size(outcome.bundle_overhead), *("" for _ in layered[1:])])
    return [*_table(["changed layer", "uncompressed", *(s.method for s in layered)], rows), "",
            f"The other methods' totals count their layer bytes only; to rebuild the image a receiver also needs "
            f"the new image config, {size(outcome.config_zstd)} with `zstd -19` (the bundle carries it)."]


def summary_table(outcomes: list[Outcome]) -> list[str]:
    methods = [s.method for s in outcomes[0].shipped]
    rows = []
    for outcome in outcomes:
        reference = outcome.deltaimg.size
        cells = [size(reference)] + [f"{size(s.size)} ({versus(s.size, reference, 'larger', 'smaller')})"
                                     for s in outcome.shipped[1:]]
        rows.append([outcome.name, size(outcome.new_image_size), *cells])
    return _table(["scenario", "docker save (raw)", *methods], rows)


def targets(outcomes: list[Outcome]) -> list[str]:
    rows = []
    beaten = [f"{o.name}: {s.method} {size(s.size)} < {size(o.deltaimg.size)}"
              for o in outcomes for s in o.shipped[1:] if s.size <= o.deltaimg.size]
    rows.append(["deltaimg smaller than every other method, every scenario", "; ".join(beaten) or "smallest everywhere",
                 _met(not beaten)])
    rebuild = next((o for o in outcomes if o.name == "rebuild"), None)
    if rebuild is not None:
        share = rebuild.deltaimg.size / rebuild.method("full image").size
        rows.append([f"rebuild bundle < {REBUILD_TARGET:.0%} of the full image's zstd size",
                     f"{share:.2%} ({size(rebuild.deltaimg.size)} of {size(rebuild.method('full image').size)})",
                     _met(share < REBUILD_TARGET)])
    peaks = [("make", o.name, o.deltaimg.cost) for o in outcomes] + \
            [(a.method, o.name, a.cost) for o in outcomes for a in o.applied[:2]]
    worst = max(peaks, key=lambda p: p[2].peak_kib or 0)
    rows.append([f"peak memory of make and apply < {MEMORY_TARGET_MIB} MiB",
                 f"highest: {memory(worst[2])} ({worst[0]}, {worst[1]})",
                 _met((worst[2].peak_kib or 0) < MEMORY_TARGET_MIB * 1024)])
    slower = [f"{o.name}: make {seconds(o.deltaimg.cost.seconds)} vs zstd {seconds(o.method('full image').cost.seconds)}"
              for o in outcomes]
    rows.append(["make faster than `zstd -19 --long` of the full image", "; ".join(slower),
                 _met(all(o.deltaimg.cost.seconds < o.method("full image").cost.seconds for o in outcomes))])
    return _table(["target", "measured", "met?"], rows)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def findings(outcomes: list[Outcome]) -> list[str]:
    """Sentences drawn from the numbers, so a rerun cannot leave stale claims behind."""
    wins = [o.name for o in outcomes if all(o.deltaimg.size < s.size for s in o.shipped[1:])]
    slower = [o.name for o in outcomes if o.applied[1].cost.seconds > o.applied[-1].cost.seconds]
    quicker = [o for o in outcomes if o.deltaimg.cost.seconds < o.method("full image").cost.seconds]
    lighter = [o for o in outcomes if (o.deltaimg.cost.peak_kib or 0) < (o.method("full image").cost.peak_kib or 0)]
    lines = [f"deltaimg ships the fewest bytes in {len(wins)} of {len(outcomes)} scenarios"
             f"{' (' + ', '.join(wins) + ')' if wins else ''}. `deltaimg make` was faster than `zstd -19 --long` "
             f"of the full image in {len(quicker)} of {len(outcomes)} scenarios and needed less memory in "
             f"{len(lighter)}. `deltaimg apply` into the engine was slower than `docker load` of the whole new "
             f"image in {len(slower)} of {len(outcomes)} scenarios"
             + (": the engine already holds the shared base layers, so `docker load` only unpacks the changed ones, "
                "while deltaimg also reads the base layers its deltas need (from the engine's store in place, "
                "or by `docker save` where it may not read the store), verifies every payload and rebuilds the "
                "changed layers before loading them." if slower
                else "."), ""]
    for o in outcomes:
        others = sorted(o.shipped[1:], key=lambda s: s.size)
        best = others[0]
        if o.deltaimg.size < best.size:
            lines.append(f"- **{o.name}**: deltaimg is the smallest, {times(best.size, o.deltaimg.size)} smaller "
                         f"than the next best ({best.method}, {size(best.size)}) and "
                         f"{times(o.method('full image').size, o.deltaimg.size)} smaller than the zstd'd full image.")
        else:
            lines.append(f"- **{o.name}**: deltaimg does **not** win: {best.method} ships {size(best.size)}, "
                         f"deltaimg {size(o.deltaimg.size)} ({versus(o.deltaimg.size, best.size, 'larger', 'smaller')}).")
            payloads = sum(o.deltaimg.layer_sizes)
            if payloads < best.size:
                lines.append(f"  deltaimg's layer payloads alone are smaller ({size(payloads)}); the difference is the "
                             f"bundle's fixed part ({size(o.bundle_overhead)}: manifest, signature and the image config), "
                             f"while {best.method}'s total leaves out the config it would also "
                             f"need ({size(o.config_zstd)} compressed).")
            else:
                lines.append(f"  The layer payloads alone are larger too ({size(payloads)} against {size(best.size)}): "
                             "a coding loss inside `deltaimg make`, not bundle overhead.")
        engine, exported, load = (a.cost.seconds for a in o.applied[1:])
        lines.append(f"  Make took {seconds(o.deltaimg.cost.seconds)} (zstd of the full image: "
                     f"{seconds(o.method('full image').cost.seconds)}); apply into the engine took {seconds(engine)} "
                     f"({seconds(exported)} with the base read by `docker save`) against {seconds(load)} for "
                     "`docker load` of the full image.")
    return lines


# -- the document ---------------------------------------------------------------------------
def machine() -> str:
    """CPU, cores, memory, kernel and the versions that shape the numbers."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    memory_kib = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
    docker = run(["docker", "version", "-f", "{{.Server.Version}}"]).strip()
    zstd = run(["zstd", "--version"]).split(" v")[-1].split(",")[0].strip()
    return (f"{cpu.group(1) if cpu else platform.processor()}, {len(re.findall('^processor', cpuinfo, re.M))} cores, "
            f"{int(memory_kib.group(1)) / 1024 ** 2 if memory_kib else 0:.0f} GiB RAM; Linux {platform.release()}; "
            f"Docker engine {docker}; zstd {zstd}; Python {platform.python_version()}")


def chart(outcomes: list[Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    methods = [s.method for s in outcomes[0].shipped]
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(10, 5))
    for number, method in enumerate(methods):
        xs = [i + (number - (len(methods) - 1) / 2) * width for i in range(len(outcomes))]
        axes.bar(xs, [o.method(method).size for o in outcomes], width, label=method)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: size(v).replace(".0 ", " ")))
    axes.set_xticks(range(len(outcomes)), [o.name for o in outcomes])
    axes.set_ylabel("bytes to ship (log scale)")
    axes.set_title("Update size per method and scenario (smaller is better)")
    axes.legend(fontsize="small", ncols=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    axes.grid(axis="y", which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


METHOD_NOTES = """\
Every scenario is an image pair built on this host with `docker build` (the engine's classic builder, one
layer per `COPY`/`RUN`) from content no one here wrote: a Debian bookworm root filesystem made with
`debootstrap --variant=minbase` and imported with `docker import`, `.deb`s from the Debian archive,
wheels from PyPI. Both images are exported with `docker save`; every method starts from those archives.

- **deltaimg**: `deltaimg make OLD.tar NEW.tar` (the whole signed bundle file, manifest and signature
  included). Apply is timed twice: rebuilding the new image into an archive (`--base OLD.tar -o NEW.tar`),
  and into the engine (`deltaimg apply`, which reads the base entries it needs, rebuilds the missing layers
  and `docker load`s them), with the new image removed from the engine first. Into the engine twice:
  reading the base from Docker's overlay2 store in place (what it does as root on the engine's host), and
  with `DELTAIMG_READ_STORE=0`, through `docker save` (what it does anywhere else).
- **full image**: `zstd -19 --long=27` of the `docker save` archive: what a host without the old image needs.
- **changed layers**: the new image's layers whose diff_id the old image lacks, each `zstd -19 --long`,
  summed: registry-style layer dedup, as `docker pull` or `skopeo copy` would ship them.
- **xdelta3**, **zstd patch-from**, **rdiff + zstd**: the same changed layers, each encoded against the old
  image's layer at the same position (an empty file where there is none), summed. rdiff is `rdiff
  signature` + `rdiff delta`, then `zstd -19` of the delta; its time includes all three.
- Times are wall clock of one run each, peak memory is `/usr/bin/time -v`'s maximum resident set size;
  for per-layer methods the times are summed and the peak is the largest one. Multi-threaded zstd runs
  use `-T{cores}`, as many threads as `deltaimg make` uses; patch-from runs `--single-thread` (its best
  ratio). `docker load` does its work in dockerd, so its client's memory is not reported; likewise the
  `docker load` inside deltaimg's engine apply is not in its peak.
- Ratios are against deltaimg: "1.8x larger" means that method ships 1.8 times deltaimg's bytes.
"""

CAVEATS = """\
What these numbers do not say: one run per figure on a shared 2-core machine (other jobs may have used
the engine at the same time), so times are indicative to roughly ±20%; xdelta3 runs with its default
64 MiB source window (`-B`), which is what people type but hides matches in larger layers; the
baselines ship raw deltas with no signature or integrity data, and none of them can rebuild the
image ID by itself (the receiver must also reassemble the image archive).
"""


def document(outcomes: list[Outcome], command: str, tool: str, minutes: float) -> str:
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = ["# deltaimg benchmarks", "",
             f"{tool} measured {today} on {machine()}. Produced by `{command}` in {minutes:.0f} minutes "
             "(`--quick` runs a subset, `--scenario NAME` one scenario; only a full run rewrites this page).", "",
             "![bundle sizes per method and scenario, log scale](benchmarks.png)", "",
             "## Summary: bytes to ship", "", *summary_table(outcomes), "",
             "## Targets", "", *targets(outcomes), "",
             "## Findings", "", *findings(outcomes), "", CAVEATS,
             "## Method", "", METHOD_NOTES,
             "## Scenarios", ""]
    for outcome in outcomes:
        lines += scenario_tables(outcome)
    return "\n".join(lines).rstrip() + "\n"
