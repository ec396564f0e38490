"""What the benchmark needs on the host: root, the command-line tools, the engine, matplotlib."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from benchlib.proc import StepFailed, log, run, succeeds

# command -> the Debian package that ships it
TOOLS = {
    "xdelta3": "xdelta3",
    "rdiff": "rdiff",
    "zstd": "zstd",
    "debootstrap": "debootstrap",
    "/usr/bin/time": "time",
}
APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=300"]  # other jobs on this host may be running apt


def require_root() -> None:
    if os.geteuid() != 0:
        raise StepFailed("run as root: debootstrap, apt-get and the Docker engine need it")


def ensure_tools() -> None:
    """Install the missing tools with apt-get, saying so."""
    missing = sorted({package for command, package in TOOLS.items() if shutil.which(command) is None})
    if not missing:
        return
    log(f"installing missing tools with apt-get: {' '.join(missing)}")
    run(["apt-get", *APT_LOCK_WAIT, "update", "-q"])
    run(["apt-get", *APT_LOCK_WAIT, "install", "-y", "-q", "--no-install-recommends", *missing],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_engine(repo: Path) -> None:
    """Start the Docker engine with scripts/ensure-docker when it does not answer."""
    if succeeds(["docker", "info"]):
        return
    log("the Docker engine does not answer; running scripts/ensure-docker")
    run(["bash", str(repo / "scripts" / "ensure-docker")])


def ensure_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise StepFailed("matplotlib is missing (it draws docs/benchmarks.png): python3 -m pip install -e '.[bench]'")
