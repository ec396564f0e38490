"""A Debian root with only python3, made once with debootstrap and cached, and entered without network.

The cached root is never changed: each :class:`Root` mounts it as the lower layer of an overlay in a
mount namespace of its own (``unshare -m -n``: no network either) and chroots there; what the tests
write lands in the overlay's upper folder, under the test's tmp_path.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("DELTAIMG_TEST_CACHE", "/var/cache/deltaimg-test"))
SUITE = "bookworm"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def mirror() -> str:
    """The Debian mirror apt is configured with here (deb822 or one-line sources), else deb.debian.org."""
    for source in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + ["/etc/apt/sources.list"]:
        try:
            text = Path(source).read_text()
        except OSError:
            continue
        found = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+" + SUITE, text, re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def debian_root(arch: str = "amd64") -> Path:
    """CACHE/bookworm-ARCH, a minbase root with python3, made on first use (about 50 s for amd64 here;
    another ARCH needs binfmt_misc and qemu-user-static, as scripts/test-kit-arm64 sets up)."""
    root = CACHE / f"{SUITE}-{arch}"
    if (root / "usr/bin/python3").exists():
        return root
    partial = CACHE / f".{SUITE}-{arch}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    foreign = [] if arch == "amd64" else ["--arch", arch, "--foreign"]  # second stage run through qemu-user
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", *foreign, SUITE, str(partial), mirror()],
                   check=True, capture_output=True, timeout=3600)
    if foreign:
        subprocess.run(["chroot", str(partial), "/debootstrap/debootstrap", "--second-stage"], check=True,
                       capture_output=True, timeout=7200)
    try:
        os.rename(partial, root)
    except OSError:  # another run made it meanwhile
        shutil.rmtree(partial)
    return root


class Root:
    """The cached root with a writable overlay in ``work`` (kept between :meth:`run` calls)."""

    def __init__(self, lower: Path, work: Path) -> None:
        self.lower = lower
        self.upper, self.scratch, self.merged = work / "upper", work / "overlay-work", work / "merged"
        for path in (self.upper, self.scratch, self.merged):
            path.mkdir(parents=True)

    def put(self, source: str | Path, inside: str) -> None:
        """Copy a host file to the absolute path ``inside`` of the root."""
        target = self.upper / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def path(self, inside: str) -> Path:
        """Where the host sees a file that a command wrote at ``inside``."""
        return self.upper / inside.lstrip("/")

    def run(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run the sh ``script`` as root inside the root, with no network and an empty environment."""
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.scratch}"
        inner = f"cd /root && {script}"
        outer = (f"mount -t overlay overlay -o {shlex.quote(options)} {shlex.quote(str(self.merged))} && "
                 f"mount -t proc proc {shlex.quote(str(self.merged / 'proc'))} && "
                 f"exec chroot {shlex.quote(str(self.merged))} /usr/bin/env -i PATH={PATH} HOME=/root "
                 f"/bin/sh -c {shlex.quote(inner)}")
        return subprocess.run(["unshare", "--mount", "--net", "sh", "-c", outer], capture_output=True, text=True,
                              timeout=timeout)
