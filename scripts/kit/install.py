"""Install deltaimg from this kit, with python3's standard library only, and never the network.

Order of work, so that a damaged kit or a host the kit cannot serve changes nothing:
  1. check every file against SHA256SUMS (and that nothing unlisted was added);
  2. check the host: CPU, libc (glibc, new enough), CPython version;
  3. unpack the host's wheels (they are zip files) into PREFIX/.VERSION.partial, then rename it to
     PREFIX/VERSION and switch the PREFIX/current symlink with one rename(2): an install cut short
     at any point leaves the previous version working;
  4. write the deltaimg command (a two-line sh wrapper) into BINDIR, also with a rename.

Written without f-strings or annotations so that an old python3 still runs it far enough to say
that it is too old.
"""

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import zipfile

KIT = os.path.dirname(os.path.abspath(__file__))
PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))
CPUS = ("x86_64", "aarch64")
MARKER = "# written by the deltaimg install kit"
MAX_WHEEL_FILES = 20000  # far above what deltaimg's wheels hold: a zip naming more is not ours
MAX_UNPACKED = 512 * 1024 * 1024  # bytes, all wheels of one target together (about 40 MB today)


class Refused(Exception):
    """Why the install stops; exit code 2 for the host or the command line, 3 for the kit, 1 when
    deltaimg was installed but its units were not."""

    def __init__(self, message, code=2):
        Exception.__init__(self, message)
        self.code = code


def say(message):
    print("install: " + message, flush=True)  # before what install-edge prints


def main(argv):
    parser = argparse.ArgumentParser(prog="install", description="Install deltaimg from this kit, offline.")
    parser.add_argument("--prefix", metavar="DIR", default="/opt/deltaimg",
                        help="where the versions go (default /opt/deltaimg); the command goes to DIR/bin "
                             "unless --bindir is given")
    parser.add_argument("--bindir", metavar="DIR", help="where the deltaimg command goes (default /usr/local/bin)")
    parser.add_argument("--with-units", action="store_true",
                        help="also install the systemd timer and USB-stick units (scripts/install-edge)")
    parser.add_argument("--uninstall", action="store_true", help="remove deltaimg (every version) and its command")
    args = parser.parse_args(argv)
    prefix = os.path.abspath(args.prefix)
    bindir = os.path.abspath(args.bindir) if args.bindir else (
        "/usr/local/bin" if args.prefix == "/opt/deltaimg" else os.path.join(prefix, "bin"))
    wrapper = os.path.join(bindir, "deltaimg")
    if args.uninstall:
        uninstall(prefix, wrapper)
        return
    version = read_version()
    check_kit()
    target = host_target(sys.version_info, platform.machine(), libc(), glibc_floor())
    check_wrapper(wrapper)
    install(version, target, prefix, wrapper)
    if args.with_units:
        install_units(wrapper)


def install_units(wrapper):
    """scripts/install-edge's units for this command: the systemd timer and stick units, or the cron
    entry on a host without systemd. deltaimg itself is installed by now, whatever happens here."""
    edge = ["bash", os.path.join(KIT, "scripts", "install-edge"), "--deltaimg", wrapper]
    if not shutil.which("systemctl"):
        say("no systemd on this host: the hourly apply goes into /etc/cron.d/deltaimg")
        edge.append("--cron")
    if subprocess.call(edge) != 0:
        raise Refused("deltaimg is installed, its units are not (see install-edge's message above); "
                      "run %s by hand once the cause is fixed" % " ".join(edge[1:]), 1)


def read_version():
    try:
        with open(os.path.join(KIT, "VERSION")) as f:
            return f.read().strip()
    except OSError:
        raise Refused("the kit is damaged: VERSION is missing (copy the kit again)", 3)


def check_kit():
    """Every file listed in SHA256SUMS is there with its digest, and no file is there unlisted."""
    sums = os.path.join(KIT, "SHA256SUMS")
    try:
        with open(sums) as f:
            lines = f.read().splitlines()
    except OSError:
        raise Refused("the kit is damaged: SHA256SUMS is missing (copy the kit again)", 3)
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or name.startswith("/") or ".." in name.split("/"):
            raise Refused("the kit is damaged: SHA256SUMS has a malformed line (copy the kit again)", 3)
        listed[name] = digest
    for name in sorted(listed):
        path = os.path.join(KIT, name)
        if not os.path.isfile(path):
            raise Refused("the kit is damaged: %s is missing (copy the kit again; "
                          "check it with sha256sum -c SHA256SUMS)" % name, 3)
        if sha256(path) != listed[name]:
            raise Refused("the kit is damaged: %s does not match SHA256SUMS (copy the kit again; "
                          "check it with sha256sum -c SHA256SUMS)" % name, 3)
    for directory, dirs, files in os.walk(KIT):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for file in files:
            name = os.path.relpath(os.path.join(directory, file), KIT)
            if name != "SHA256SUMS" and name not in listed:
                raise Refused("the kit holds %s, which SHA256SUMS does not list: it is not as built "
                              "(copy the kit again)" % ascii(name), 3)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def libc():
    """("glibc", (2, 36)), ("musl", None) or (None, None) when neither is recognised."""
    try:
        name, _, number = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
        if name == "glibc":
            return "glibc", tuple(int(part) for part in number.split(".")[:2])
    except (AttributeError, ValueError, OSError):
        pass
    if any(name.startswith("ld-musl-") for name in _listdir("/lib")):
        return "musl", None
    return None, None


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def glibc_floor():
    """The newest glibc a wheel of the kit asks for, as (2, X). A wheel tagged for several
    (manylinux_2_17_x86_64.manylinux_2_28_x86_64) runs on the oldest of them."""
    floor = (2, 17)
    for name in _listdir(os.path.join(KIT, "wheels")):
        needs = []
        for tag in name[:-len(".whl")].split("-")[-1].split("."):
            parts = tag.split("_")
            if tag.startswith("manylinux_") and len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
                needs.append((int(parts[1]), int(parts[2])))
        if needs and not any(tag.startswith(("manylinux1_", "manylinux2010_", "manylinux2014_"))
                             for tag in name.split("-")[-1].split(".")):
            floor = max(floor, min(needs))
    return floor


def host_target(version_info, machine, found_libc, floor):
    """The kit's target name for this host (cp311-aarch64), or Refused saying what was found and what is needed."""
    served = "CPython %d.%d to %d.%d on Linux x86_64 or aarch64 with glibc %d.%d or newer" % (
        PYTHONS[0] + PYTHONS[-1] + floor)
    cpu = {"arm64": "aarch64", "amd64": "x86_64"}.get(machine.lower(), machine)
    if cpu not in CPUS:
        raise Refused("this host's CPU is %s; the kit serves %s" % (ascii(machine), served))
    kind, number = found_libc
    if kind != "glibc":
        raise Refused("this host's C library is %s, not glibc; the kit serves %s" % (kind or "unknown", served))
    if number < floor:
        raise Refused("this host has glibc %d.%d; the kit serves %s" % (number + (served,)))
    if platform.python_implementation() != "CPython" or tuple(version_info[:2]) not in PYTHONS:
        raise Refused("this host's python3 is %s %d.%d; the kit serves %s (set DELTAIMG_PYTHON to another "
                      "python3)" % ((platform.python_implementation(),) + tuple(version_info[:2]) + (served,)))
    return "cp%d%d-%s" % (version_info[0], version_info[1], cpu)


def check_wrapper(wrapper):
    """Refuse to replace a deltaimg command that this kit did not write (a pip install, say)."""
    if os.path.lexists(wrapper) and not _is_ours(wrapper):
        raise Refused("%s exists and was not written by a deltaimg kit (a pip install?): remove it "
                      "or pass --bindir DIR" % wrapper)


def _is_ours(wrapper):
    try:
        with open(wrapper) as f:
            return MARKER in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def install(version, target, prefix, wrapper):
    with open(os.path.join(KIT, "targets", target)) as f:
        wheels = [line.strip() for line in f if line.strip()]
    os.makedirs(prefix, exist_ok=True)
    for stale in _listdir(prefix):  # what an install cut short left
        if stale.startswith(".") and stale.endswith(".partial"):
            _remove(os.path.join(prefix, stale))
    staging = os.path.join(prefix, ".%s.partial" % version)
    lib = os.path.join(staging, "lib")
    os.makedirs(lib)
    budget = [MAX_UNPACKED]
    for wheel in wheels:
        unpack(os.path.join(KIT, "wheels", wheel), lib, budget)
    with open(os.path.join(staging, "deltaimg.py"), "w") as f:
        f.write("import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), 'lib'))\n"
                "from deltaimg.cli import main\nmain()\n")
    with open(os.path.join(staging, "INSTALLED"), "w") as f:
        f.write("deltaimg %s for %s\nwheels: %s\n" % (version, target, " ".join(wheels)))
    subprocess.check_call([sys.executable, "-I", "-m", "compileall", "-q", lib], stdout=subprocess.DEVNULL)
    final = os.path.join(prefix, version)
    current = os.path.join(prefix, "current")
    previous = os.readlink(current) if os.path.islink(current) else None
    if os.path.exists(final):  # the same version again: move it aside, and away once current names the new one
        aside = os.path.join(prefix, ".%s.old.partial" % version)
        os.rename(final, aside)
    os.rename(staging, final)
    link = os.path.join(prefix, ".current.partial")
    os.symlink(version, link)
    os.rename(link, current)  # atomic: current names the old version or the new one, never nothing
    write_wrapper(wrapper, current)
    for name in _listdir(prefix):  # keep this version and the one before it (to go back by hand)
        path = os.path.join(prefix, name)
        if name not in (version, previous, "current", "bin") and (name.endswith(".partial") or
                                                                 os.path.isfile(os.path.join(path, "INSTALLED"))):
            _remove(path)
    say("deltaimg %s installed in %s (for %s); command %s" % (version, final, target, wrapper))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def unpack(wheel, lib, budget):
    """Extract one wheel into ``lib`` as pip would for a purelib/platlib install; the sizes its zip
    directory declares are capped (``budget``: bytes left for all wheels), and no name leaves ``lib``."""
    with zipfile.ZipFile(wheel) as archive:
        members = archive.infolist()
        if len(members) > MAX_WHEEL_FILES:
            raise Refused("%s holds %d files: not a wheel this kit was built with" % (wheel, len(members)), 3)
        for member in members:
            name = member.filename
            parts = name.split("/")
            if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
                parts = parts[2:]
            elif parts[0].endswith(".data"):
                continue  # scripts, headers, data: deltaimg needs none of them
            if name.startswith("/") or ".." in parts or not parts[-1]:
                if name.endswith("/"):
                    continue
                raise Refused("%s names %s outside its folder: not a wheel this kit was built with" % (wheel, ascii(name)), 3)
            budget[0] -= member.file_size
            if budget[0] < 0:
                raise Refused("the wheels unpack to more than %d MiB: not the kit as built" % (MAX_UNPACKED >> 20), 3)
            path = os.path.join(lib, *parts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with archive.open(member) as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)
            mode = (member.external_attr >> 16) & 0o777
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def write_wrapper(wrapper, current):
    os.makedirs(os.path.dirname(wrapper), exist_ok=True)
    partial = wrapper + ".partial"
    with open(partial, "w") as f:
        f.write("#!/bin/sh\n%s\nexec %s -I %s \"$@\"\n" % (MARKER, sys.executable, os.path.join(current, "deltaimg.py")))
    os.chmod(partial, 0o755)
    os.rename(partial, wrapper)


def uninstall(prefix, wrapper):
    removed = []
    if os.path.lexists(wrapper):
        if not _is_ours(wrapper):
            raise Refused("%s was not written by a deltaimg kit: left as it is; remove it by hand" % wrapper)
        os.unlink(wrapper)
        removed.append(wrapper)
    if os.path.isdir(prefix):
        ours = [n for n in _listdir(prefix) if n in ("current", "bin") or n.endswith(".partial")
                or os.path.isfile(os.path.join(prefix, n, "INSTALLED"))]
        for name in ours:
            path = os.path.join(prefix, name)
            if name != "bin":
                _remove(path)
            elif not _listdir(path):
                os.rmdir(path)
        if not _listdir(prefix):
            os.rmdir(prefix)
        removed.append(prefix)
    say("removed %s" % (" and ".join(removed) if removed else "nothing: deltaimg was not installed there"))
    if os.path.exists("/etc/systemd/system/deltaimg-apply.timer") or os.path.exists("/etc/cron.d/deltaimg"):
        say("the edge units (systemd timer, cron entry, udev rule) and /var/lib/deltaimg stay: remove them by hand "
            "(docs/install.md)")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Refused as refused:
        print("install: " + str(refused), file=sys.stderr)
        sys.exit(refused.code)
    except (OSError, zipfile.BadZipFile, subprocess.CalledProcessError) as exc:
        print("install: %s (nothing was switched: the previous version, if any, is still the current one)" % exc,
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("install: interrupted (the previous version, if any, is still the current one)", file=sys.stderr)
        sys.exit(130)
