"""A built-in example: an image pair made from this machine's own Python, and the whole job run on it.

The base layer holds part of the Python standard library and compiled extension modules; the app
layer holds an "application" and a pip-style ``*.dist-info``. Version 2 changes them the way an
upgrade does: edited sources, a patched shared library with a new version string, a renamed
dist-info, a new file, and a rebuilt base layer whose files only got new timestamps.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import sysconfig
import tarfile

from deltaimg import interrupts
from deltaimg.tar import writer as archivewriter

STDLIB_PACKAGES = ("json", "email", "http", "xml", "urllib", "logging", "concurrent")
MTIME_V1, MTIME_V2 = 1_700_000_000, 1_700_086_400


def _stdlib_files() -> list[tuple[str, str]]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for package in STDLIB_PACKAGES:
        for path in sorted(glob.glob(os.path.join(root, package, "**", "*.py"), recursive=True)):
            files.append((path, "usr/lib/python3/" + os.path.relpath(path, root)))
    dynload = os.path.join(root, "lib-dynload")
    for path in sorted(glob.glob(os.path.join(dynload, "*.so")))[:12]:
        files.append((path, "usr/lib/python3/lib-dynload/" + os.path.basename(path)))
    return files


def _layer(entries: list[tuple[str, bytes]], mtime: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in entries:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in dirs:
                    dirs.add(directory)
                    info = tarfile.TarInfo(directory + "/")
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _upgrade_binary(data: bytes) -> bytes:
    """Insert a little code near the middle and bump a version string, as a patch release does."""
    middle = len(data) // 2
    return data[:middle] + hashlib.sha256(data).digest() * 8 + data[middle:].replace(b"3.", b"4.", 3)


def _app(version: str) -> list[tuple[str, bytes]]:
    app = f'"""The example application."""\nVERSION = "{version}"\n\n\ndef main():\n    print("hello from", VERSION)\n'
    meta = f"Metadata-Version: 2.1\nName: exampleapp\nVersion: {version}\n"
    entries = [("srv/app/main.py", app.encode()),
               (f"srv/app/exampleapp-{version}.dist-info/METADATA", meta.encode()),
               (f"srv/app/exampleapp-{version}.dist-info/RECORD", f"main.py,,\nVERSION,{version}\n".encode())]
    return entries


def build_pair(directory: str) -> tuple[str, str]:
    """Write ``app-1.0.tar`` and ``app-1.1.tar`` (docker save archives) into ``directory``."""
    files = [(name, open(path, "rb").read()) for path, name in _stdlib_files()]
    changed = []
    for index, (name, data) in enumerate(files):
        if name.endswith(".so") and index % 4 == 0:
            data = _upgrade_binary(data)
        elif name.endswith(".py") and index % 25 == 0:
            data = data.replace(b"def ", b"def  ", 2) + b"\n# patched in 1.1\n"
        changed.append((name, data))
    v1 = [_layer(files, MTIME_V1), _layer(_app("1.0"), MTIME_V1)]
    v2 = [_layer(changed, MTIME_V2), _layer(_app("1.1") + [("srv/app/NEWS", b"1.1: faster\n")], MTIME_V2)]
    paths = []
    for version, layers in (("1.0", v1), ("1.1", v2)):
        path = os.path.join(directory, f"app-{version}.tar")
        _write_archive(path, layers, version)
        paths.append(path)
    return paths[0], paths[1]


def _write_archive(path: str, layers: list[bytes], version: str) -> None:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = {
        "architecture": "amd64", "os": "linux", "created": f"2024-01-0{1 if version == '1.0' else 2}T00:00:00Z",
        "config": {"Env": [f"APP_VERSION={version}"], "Cmd": ["python3", "/srv/app/main.py"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "example base"}, {"created_by": "example app"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    sources = []
    for layer, diff_id in zip(layers, diff_ids):
        sources.append((diff_id, len(layer), lambda write, layer=layer: write(layer)))
    with open(path, "wb") as out:
        archivewriter.write_image(out, config_bytes, [f"example/app:{version}"], sources)


def run_demo(directory: str | None, say) -> dict:
    """keygen, make, verify and apply on the example pair, as the README shows; returns the figures."""
    from deltaimg import report
    from deltaimg.bundle import signing
    from deltaimg.apply.archive import apply_to_archive
    from deltaimg.bundle.reader import open_bundle
    from deltaimg.images import open_image
    from deltaimg.make.build import make_bundle

    with interrupts.work_folder("deltaimg-example-") as scratch:
        work = directory or scratch
        os.makedirs(work, exist_ok=True)
        base, target = build_pair(work)
        say(f"example images: {base} and {target} (docker save archives)")
        key = os.path.join(work, "release-key")
        key_id = signing.generate(key, force=True)
        say(f"deltaimg keygen {key}  -> key id {key_id}")
        bundle_path = os.path.join(work, "app-1.0-to-1.1.dimg")
        manifest = make_bundle(open_image(base), open_image(target), bundle_path, signing.load_private(key))
        say(f"deltaimg make {base} {target} -o {bundle_path} --key {key}")
        bundle = open_bundle(bundle_path, [signing.load_public(key + ".pub")])
        say(f"deltaimg verify {bundle_path} --trust {key}.pub  -> signature and every payload OK")
        rebuilt = os.path.join(work, "app-1.1-rebuilt.tar")
        rebuild = apply_to_archive(bundle, open_image(base), rebuilt, force=True)
        same = open_image(rebuilt).config_digest == open_image(target).config_digest == rebuild.target_id
        say(f"deltaimg apply {bundle_path} --trust {key}.pub --base {base} -o {rebuilt}")
        say(f"rebuilt image {rebuild.target_id[:19]}: {'identical to' if same else 'DIFFERENT FROM'} app-1.1")
        say(report.ratio_line(manifest["bundle_size"], manifest["full_image_size"]))
        say(f"the example files stay in {directory}" if directory else
            f"the example files in {scratch} are removed now (deltaimg demo --dir DIR keeps them)")
        return {"bundle_size": manifest["bundle_size"], "full_image_size": manifest["full_image_size"],
                "identical": same, "directory": directory}
