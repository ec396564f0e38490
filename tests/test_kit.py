"""The offline install kit (scripts/make-kit, docs/install.md), built from this checkout and installed
into a Debian root that has python3 and nothing else (no pip, no venv), with no network.

Building the kit needs PyPI (pip download); the root is made once with debootstrap and cached
(tests/kitroot.py). Without them the tests skip, except under CI=true, where they fail.
DELTAIMG_TEST_KIT_ARCH=arm64 runs the same tests in an arm64 root (scripts/test-kit-arm64).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from deltaimg import __version__
from tests import imagefactory as f
from tests.conftest import archive_image, assert_same_image, run_cli
from tests.kitroot import Root, debian_root

CHECKOUT = Path(__file__).resolve().parent.parent
KIT = f"deltaimg-kit-{__version__}"
ARCH = os.environ.get("DELTAIMG_TEST_KIT_ARCH", "amd64")  # arm64: scripts/test-kit-arm64, through qemu-user
CPU = {"amd64": "x86_64", "arm64": "aarch64"}[ARCH]
DAMAGED = ("install: the kit is damaged: {} does not match SHA256SUMS (copy the kit again; "
           "check it with sha256sum -c SHA256SUMS)\n")


def needs(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kit")
    made = subprocess.run([str(CHECKOUT / "scripts/make-kit"), "--output-dir", str(out)], capture_output=True,
                          text=True, timeout=1800)
    if made.returncode != 0:
        needs(f"scripts/make-kit failed (is PyPI reachable?): {made.stderr.strip()[-300:]}")
    return out / f"{KIT}.tar.gz"


@pytest.fixture(scope="module")
def lower() -> Path:
    missing = [tool for tool in ("debootstrap", "unshare", "chroot") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        needs(f"the kit test runs as root with debootstrap, unshare and chroot (missing: {missing or 'root'})")
    return debian_root(ARCH)


@pytest.fixture
def root(lower, tmp_path) -> Root:
    return Root(lower, tmp_path / "root")


def wheels_of(kit: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(kit) as tar:
        return [m for m in tar.getmembers() if m.name.startswith(f"{KIT}/wheels/")]


def test_the_kit_holds_wheels_for_both_cpus_and_every_python_and_sums_for_every_file(kit):
    with tarfile.open(kit) as tar:
        names = tar.getnames()
        files = {m.name[len(KIT) + 1:] for m in tar.getmembers() if m.isfile()}
        sums = tar.extractfile(f"{KIT}/SHA256SUMS").read().decode()
        targets = {name.rsplit("/", 1)[1]: tar.extractfile(name).read().decode().split()
                   for name in names if name.startswith(f"{KIT}/targets/")}
        for line in sums.splitlines():
            digest, name = line.split("  ")
            assert hashlib.sha256(tar.extractfile(f"{KIT}/{name}").read()).hexdigest() == digest
    listed = {line.split("  ")[1] for line in sums.splitlines()}
    assert {"install", "install.py", "VERSION", "README", "scripts/install-edge"} <= listed
    assert sorted(targets) == [f"cp3{minor}-{cpu}" for minor in (10, 11, 12, 13) for cpu in ("aarch64", "x86_64")]
    for target, wheels in targets.items():
        cpu = target.split("-")[1]
        assert f"deltaimg-{__version__}-py3-none-any.whl" in wheels
        compiled = [w for w in wheels if not w.endswith("-none-any.whl")]
        assert {w.split("-")[0] for w in compiled} >= {"bsdiff4", "cryptography", "cffi", "backports_zstd"}, target
        assert all(cpu in w for w in compiled), target
        assert set(wheels) <= {name.split("/")[1] for name in listed if name.startswith("wheels/")}
    assert not any(w.name.split("/")[-1].split("-")[0] in ("typer", "rich", "pydantic_core", "click")
                   for w in wheels_of(kit))
    assert files == listed | {"SHA256SUMS"}


def test_installed_offline_with_only_python3_it_runs_the_demo_and_an_archive_apply(kit, root, example_pair,
                                                                                    example_bundle, keypair):
    base, target = example_pair
    for host, inside in ((kit, "/root/kit.tar.gz"), (base, "/root/app-1.0.tar"), (example_bundle, "/root/app.dimg"),
                         (keypair[1], "/root/release-key.pub")):
        root.put(host, inside)
    config = archive_image(target)[0]
    target_id = "sha256:" + hashlib.sha256(config).hexdigest()

    ran = root.run(f"! python3 -m pip --version 2>/dev/null && ! python3 -m ensurepip --version 2>/dev/null && "
                   f"tar xzf kit.tar.gz && {KIT}/install && deltaimg --version && deltaimg demo && "
                   f"deltaimg apply app.dimg --trust release-key.pub --base app-1.0.tar -o app-1.1.tar && "
                   f"readlink /opt/deltaimg/current && ls -A /tmp")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[:2] == [f"install: deltaimg {__version__} installed in /opt/deltaimg/{__version__} "
                         f"(for cp311-{CPU}); command /usr/local/bin/deltaimg", f"deltaimg {__version__}"]
    demo = lines[2:-2]
    assert len(demo) == 8 and re.fullmatch(r"rebuilt image sha256:[0-9a-f]{12}: identical to app-1.1", demo[5])
    scratch = demo[0].split()[2].rsplit("/", 1)[0]
    assert demo[7] == f"the example files in {scratch} are removed now (deltaimg demo --dir DIR keeps them)"
    assert lines[-2:] == [f"app-1.1.tar: example/app:1.1 {target_id[:19]} rebuilt, every layer matches its diff_id",
                          __version__]  # and ls -A /tmp printed nothing: the demo left nothing there
    assert_same_image(str(root.path("/root/app-1.1.tar")), config)


def two_platform_index(folder: Path, binaries: dict[str, Path], tag: str) -> dict[str, bytes]:
    """An oci: layout whose index lists this root's CPU (an image of ``binaries``, real ELF files from
    the root) and the other one (noise); the config bytes of each, by platform."""
    other = {"amd64": "arm64", "arm64": "amd64"}[ARCH]
    own = f.write_layer(folder.with_suffix(".own.tar"), f.complete_tree(
        [f.file(name, path.read_bytes(), mode=0o755) for name, path in binaries.items()]))
    noise = f.write_layer(folder.with_suffix(".other.tar"), f.complete_tree([f.file("usr/bin/noise", os.urandom(4096))]))
    written = f.write_oci_dir(folder, [f.ImageSpec([own], config={"architecture": ARCH}),
                                       f.ImageSpec([noise], config={"architecture": other})], nested_index_ref=tag)
    return {image.platform: image.config_bytes for image in written}


def test_a_bundle_made_for_this_cpu_from_a_two_platform_index_rebuilds_its_image_and_the_binaries_run(
        kit, root, lower, keypair, tmp_path):
    usr_bin = lower / "usr/bin"
    two_platform_index(tmp_path / "v1", {"usr/bin/ls": usr_bin / "ls", "usr/bin/cat": usr_bin / "cat"}, "app:1")
    target = two_platform_index(tmp_path / "v2", {"usr/bin/ls": usr_bin / "dir", "usr/bin/cat": usr_bin / "cat",
                                                  "usr/bin/sort": usr_bin / "sort"}, "app:2")
    made = run_cli("make", f"oci:{tmp_path / 'v1'}", f"oci:{tmp_path / 'v2'}", "--platform", f"linux/{ARCH}",
                   "-o", str(tmp_path / "app.dimg"), "--key", keypair[0])
    assert made.returncode == 0, made.stderr
    root.put(kit, "/root/kit.tar.gz")
    root.put(tmp_path / "app.dimg", "/root/app.dimg")
    root.put(keypair[1], "/root/release-key.pub")
    for path in (tmp_path / "v1").rglob("*"):
        if path.is_file():
            root.put(path, f"/root/v1/{path.relative_to(tmp_path / 'v1')}")
    target_id = "sha256:" + hashlib.sha256(target[f"linux/{ARCH}"]).hexdigest()

    ran = root.run(f"tar xzf kit.tar.gz && {KIT}/install >/dev/null && deltaimg apply app.dimg --trust "
                   f"release-key.pub --base oci:/root/v1 --platform linux/{ARCH} -o app-2.tar")
    assert (ran.returncode, ran.stdout) == (0, f"app-2.tar: app:2 {target_id[:19]} rebuilt, every layer "
                                               "matches its diff_id\n"), ran.stderr
    assert_same_image(str(root.path("/root/app-2.tar")), target[f"linux/{ARCH}"])
    layer = archive_image(str(root.path("/root/app-2.tar")))[1][0]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        for name in ("ls", "sort"):
            root.path(f"/root/{name}").write_bytes(tar.extractfile(f"usr/bin/{name}").read())
            root.path(f"/root/{name}").chmod(0o755)
    ran = root.run("./sort --version | head -n 1 && ./ls --version | head -n 1")
    assert ran.stdout.splitlines() == ["sort (GNU coreutils) 9.1", "dir (GNU coreutils) 9.1"], ran.stderr


def test_an_install_killed_halfway_leaves_the_installed_version_working_and_the_next_one_cleans_up(kit, root):
    root.put(kit, "/root/kit.tar.gz")
    partial = f"/opt/deltaimg/.{__version__}.partial"
    ran = root.run(f"tar xzf kit.tar.gz && {KIT}/install >/dev/null && "
                   f"{{ {KIT}/install & }} && while [ ! -d {partial}/lib/cryptography ]; do sleep 0.01; done && "
                   f"kill -KILL $! && wait; "
                   f"ls -A /opt/deltaimg && deltaimg --version && {KIT}/install >/dev/null && ls -A /opt/deltaimg")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [f".{__version__}.partial", __version__, "current", f"deltaimg {__version__}",
                                       __version__, "current"]


def test_with_units_on_a_host_without_systemd_the_hourly_apply_is_a_cron_entry_for_the_installed_command(kit, root):
    root.put(kit, "/root/kit.tar.gz")
    ran = root.run(f"tar xzf kit.tar.gz && {KIT}/install --with-units && tail -n 1 /etc/cron.d/deltaimg")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"install: deltaimg {__version__} installed in /opt/deltaimg/{__version__} (for cp311-{CPU}); "
        "command /usr/local/bin/deltaimg",
        "install: no systemd on this host: the hourly apply goes into /etc/cron.d/deltaimg",
        "mkdir -m 0755 /var/lib/deltaimg",
        "mkdir -m 0755 /var/lib/deltaimg/inbox",
        "mkdir -m 0755 /etc/deltaimg/trusted.d",
        f"install /root/{KIT}/docs/examples/deltaimg.cron -> /etc/cron.d/deltaimg",
        "next: copy the release key's public half into /etc/deltaimg/trusted.d/ (e.g. release-key.pub)",
        "17 * * * * root /usr/local/bin/deltaimg apply /var/lib/deltaimg/inbox --wait 600 --log-format json --receipts "
        ">>/var/log/deltaimg.jsonl"]


def test_uninstall_removes_the_versions_and_the_command(kit, root):
    root.put(kit, "/root/kit.tar.gz")
    ran = root.run(f"tar xzf kit.tar.gz && {KIT}/install >/dev/null && {KIT}/install --uninstall && "
                   f"! test -e /opt/deltaimg && ! test -e /usr/local/bin/deltaimg")
    assert (ran.returncode, ran.stdout) == (0, "install: removed /usr/local/bin/deltaimg and /opt/deltaimg\n"), ran.stderr


def truncated_inside(kit: Path, member: tarfile.TarInfo) -> bytes:
    """The kit's first bytes, cut where the uncompressed tar stream is halfway through ``member``'s data."""
    middle = member.offset_data + member.size // 2
    data = kit.read_bytes()
    inflate, out = zlib.decompressobj(zlib.MAX_WBITS | 16), 0
    for cut in range(0, len(data), 4096):
        out += len(inflate.decompress(data[cut:cut + 4096]))
        if out >= middle:
            return data[:cut]
    raise AssertionError("member not in the kit")


def test_a_truncated_kit_is_refused_and_changes_nothing(kit, root, tmp_path):
    largest = max(wheels_of(kit), key=lambda m: m.size)
    (tmp_path / "cut.tar.gz").write_bytes(truncated_inside(kit, largest))
    root.put(tmp_path / "cut.tar.gz", "/root/kit.tar.gz")
    ran = root.run(f"tar xzf kit.tar.gz 2>/dev/null; {KIT}/install; echo $?; ls -A /opt /usr/local/bin")
    assert ran.stderr == DAMAGED.format(largest.name[len(KIT) + 1:])
    assert ran.stdout == "3\n/opt:\n\n/usr/local/bin:\n"  # both as empty as before


def test_a_kit_with_one_altered_wheel_is_refused_and_changes_nothing(kit, root, tmp_path):
    with tarfile.open(kit) as tar:
        tar.extractall(tmp_path / "kit", filter="data")
    wheel = sorted((tmp_path / "kit" / KIT / "wheels").iterdir())[0]
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "kit" / KIT, KIT)
    (tmp_path / "altered.tar.gz").write_bytes(buffer.getvalue())
    root.put(tmp_path / "altered.tar.gz", "/root/kit.tar.gz")
    ran = root.run(f"tar xzf kit.tar.gz && {KIT}/install; echo $?; ls -A /opt /usr/local/bin")
    assert ran.stderr == DAMAGED.format(f"wheels/{wheel.name}")
    assert ran.stdout == "3\n/opt:\n\n/usr/local/bin:\n"  # both as empty as before


def python(version: str) -> str:
    """A CPython of that version on this machine: pyenv's, or pythonX.Y on PATH (not a pyenv shim)."""
    installed = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python3")))
    found = installed[-1] if installed else shutil.which(f"python{version}")
    if not found:
        needs(f"no python{version} here (pyenv install {version} gives one)")
    return found


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_each_other_python_the_kit_serves_gets_its_wheels_and_runs_the_demo(kit, version, tmp_path):
    with tarfile.open(kit) as tar:
        tar.extractall(tmp_path, filter="data")
    env = {"PATH": os.environ["PATH"], "DELTAIMG_PYTHON": python(version), "TMPDIR": str(tmp_path)}
    ran = subprocess.run([str(tmp_path / KIT / "install"), "--prefix", str(tmp_path / "p")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert (ran.returncode, ran.stdout) == (0, f"install: deltaimg {__version__} installed in {tmp_path}/p/{__version__} "
                                               f"(for cp{version.replace('.', '')}-{platform.machine()}); command {tmp_path}/p/bin/deltaimg\n")
    demo = subprocess.run([str(tmp_path / "p/bin/deltaimg"), "demo"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines()[5].endswith(": identical to app-1.1")


@pytest.mark.parametrize("version", ["3.6", "3.9"])
def test_an_older_python_is_refused_before_anything_changes(kit, version, tmp_path):
    with tarfile.open(kit) as tar:
        tar.extractall(tmp_path, filter="data")
    env = {"PATH": os.environ["PATH"], "DELTAIMG_PYTHON": python(version)}
    ran = subprocess.run([str(tmp_path / KIT / "install"), "--prefix", str(tmp_path / "p")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert (ran.returncode, ran.stderr) == (2, f"install: this host's python3 is CPython {version}; the kit serves "
                                               f"{SERVED} (set DELTAIMG_PYTHON to another python3)\n")
    assert not (tmp_path / "p").exists()


def installer():
    spec = importlib.util.spec_from_file_location("kit_install", CHECKOUT / "scripts/kit/install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SERVED = "CPython 3.10 to 3.13 on Linux x86_64 or aarch64 with glibc 2.28 or newer"


@pytest.mark.parametrize("python, machine, libc, refusal", [
    ((3, 9, 2), "x86_64", ("glibc", (2, 31)), f"this host's python3 is CPython 3.9; the kit serves {SERVED} "
                                               "(set DELTAIMG_PYTHON to another python3)"),
    ((3, 11, 2), "armv7l", ("glibc", (2, 36)), f"this host's CPU is 'armv7l'; the kit serves {SERVED}"),
    ((3, 11, 2), "x86_64", ("musl", None), f"this host's C library is musl, not glibc; the kit serves {SERVED}"),
    ((3, 11, 2), "aarch64", ("glibc", (2, 27)), f"this host has glibc 2.27; the kit serves {SERVED}"),
])
def test_a_host_the_kit_cannot_serve_is_named_with_what_it_needs(python, machine, libc, refusal):
    install = installer()
    with pytest.raises(install.Refused) as refused:
        install.host_target(python, machine, libc, (2, 28))
    assert (str(refused.value), refused.value.code) == (refusal, 2)


@pytest.mark.parametrize("python, machine, target", [((3, 10, 0), "x86_64", "cp310-x86_64"),
                                                      ((3, 13, 1), "aarch64", "cp313-aarch64"),
                                                      ((3, 12, 3), "arm64", "cp312-aarch64")])
def test_a_host_the_kit_serves_gets_its_own_wheels(python, machine, target):
    assert installer().host_target(python, machine, ("glibc", (2, 36)), (2, 28)) == target


def test_the_glibc_a_kit_needs_is_the_newest_that_one_of_its_wheels_needs_at_least(tmp_path):
    install = installer()
    install.KIT = str(tmp_path)
    (tmp_path / "wheels").mkdir()
    for name in ("bsdiff4-1.3.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
                 "cffi-2.1.1-cp311-cp311-manylinux_2_17_x86_64.manylinux_2_24_x86_64.whl", "idna-3.20-py3-none-any.whl"):
        (tmp_path / "wheels" / name).touch()
    assert install.glibc_floor() == (2, 17)
    (tmp_path / "wheels" / "cryptography-50.0.2-cp39-abi3-manylinux_2_28_x86_64.whl").touch()
    assert install.glibc_floor() == (2, 28)
