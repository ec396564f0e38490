"""``deltaimg diff OLD NEW``: what an update changes, layer by layer, file by file, package by package.

The pair is :class:`tests.imagefactory.PackageUpgradePair`: an os layer shared by both images, an
app layer rebuilt with one edited module, and an upper layer that upgrades dpkg, apk and Python
packages and removes files with whiteouts and an opaque directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deltaimg.units import human_size
from tests import imagefactory as f
from tests.conftest import run_cli
from tests.memory import measured

SITE = "/" + f.SITE_PACKAGES
OLD_DIST = f"{SITE}/requests-2.31.0.dist-info"
NEW_DIST = f"{SITE}/requests-2.32.0.dist-info"
DIST_FILES = ("INSTALLER", "METADATA", "RECORD", "WHEEL", "top_level.txt")

PACKAGE_CHANGES = [
    {"ecosystem": "deb", "name": "curl", "old": "7.88.1-10+deb12u5", "new": None, "change": "removed"},
    {"ecosystem": "deb", "name": "libc6", "old": "2.36-9+deb12u7", "new": "2.36-9+deb12u4", "change": "downgraded"},
    {"ecosystem": "deb", "name": "libzstd1", "old": None, "new": "1.5.4+dfsg2-5", "change": "added"},
    {"ecosystem": "deb", "name": "openssl", "old": "3.0.20-1", "new": "3.0.22-1", "change": "upgraded"},
    {"ecosystem": "apk", "name": "busybox", "old": "1.36.1-r15", "new": "1.36.1-r16", "change": "upgraded"},
    {"ecosystem": "python", "name": "requests", "old": "2.31.0", "new": "2.32.0", "change": "upgraded"},
]
PACKAGE_TEXT = """\
packages: 3 upgraded, 1 downgraded, 1 added, 1 removed
  Debian packages:
    curl 7.88.1-10+deb12u5 (removed)
    libc6 2.36-9+deb12u7 → 2.36-9+deb12u4 (downgraded)
    libzstd1 1.5.4+dfsg2-5 (added)
    openssl 3.0.20-1 → 3.0.22-1
  Alpine packages:
    busybox 1.36.1-r15 → 1.36.1-r16
  Python distributions:
    requests 2.31.0 → 2.32.0"""
CONFIG_TEXT = """\
config: 11 changes
  Env APP_VERSION: "1.0" → "1.1"
  Env DEBUG: "1" → (unset)
  Env LOG_LEVEL: (unset) → "info"
  Labels org.opencontainers.image.version: "1.0" → "1.1"
  Entrypoint: (unset) → ["/usr/bin/tini", "--"]
  Cmd: ["python3", "app/main.py"] → ["python3", "-m", "app"]
  WorkingDir: "/app" → "/srv/app"
  User: "app" → "1000:1000"
  ExposedPorts: ["8080/tcp"] → ["8080/tcp", "8443/tcp"]
  Volumes: (unset) → ["/data"]
  Healthcheck: (unset) → {"Interval": 30000000000, "Test": ["CMD", "/usr/bin/curl", "-f", "http://localhost:8080/health"]}"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> f.PackageUpgradePair:
    return f.build_package_upgrade_pair(tmp_path_factory.mktemp("pair-layers"))


@pytest.fixture(scope="module")
def archives(pair, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("pair")
    old = f.write_docker_archive(tmp / "shop-1.0.tar", [pair.v1])[0].path
    new = f.write_docker_archive(tmp / "shop-1.1.tar", [pair.v2])[0].path
    return old, new


@pytest.fixture(scope="module")
def report(archives) -> dict:
    result = run_cli("diff", *map(str, archives), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def text(archives) -> list[str]:
    result = run_cli("diff", *map(str, archives), "--limit", "0")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def file_sizes(pair: f.PackageUpgradePair, *layers: str) -> dict[str, int]:
    """Path -> size of the regular files in these layers, the later layer winning."""
    return {"/" + e.name: e.size for layer in layers for e in pair.entries[layer] if e.kind == "file"}


def largest_first(paths: list[str], sizes: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(((path, sizes[path]) for path in paths), key=lambda item: (-item[1], item[0]))


def test_each_layer_is_reused_changed_or_new_with_its_size(pair, report):
    layers = [(layer["status"], layer["old_index"], layer["size"], layer["diff_id"]) for layer in report["layers"]]
    os_layer, app_v2, upgrade = pair.v2.layers
    assert layers == [("reused", 0, os_layer.size, os_layer.diff_id), ("changed", 1, app_v2.size, app_v2.diff_id),
                      ("new", None, upgrade.size, upgrade.diff_id)]
    assert report["dropped_layers"] == []
    assert report["old"]["size"] == sum(layer.size for layer in pair.v1.layers)
    assert report["new"]["tags"] == ["deltaimg/shop:1.1"] and report["new"]["layers"] == 3


def test_whiteouts_and_an_opaque_directory_remove_what_the_lower_layers_hold(pair, report):
    removed = ["/app/legacy.py", "/app/docs/README", "/app/docs/guide.txt", "/app/cache/index.bin",
               "/app/cache/objects.bin", "/app/settings/defaults.json", *(f"{OLD_DIST}/{name}" for name in DIST_FILES)]
    old_sizes = file_sizes(pair, "os", "app-v1")
    assert [(r["path"], r["size"]) for r in report["files"]["removed"]] == largest_first(removed, old_sizes)
    assert report["directories"]["removed"] == ["/app/docs", OLD_DIST]


def test_added_files_largest_first_and_a_moved_file_names_where_it_came_from(pair, report):
    new_sizes = file_sizes(pair, "upgrade")
    added = ["/app/cache/fresh.bin", "/app/config/defaults.json", *(f"{NEW_DIST}/{name}" for name in DIST_FILES)]
    assert [(r["path"], r["size"]) for r in report["files"]["added"]] == largest_first(added, new_sizes)
    moves = {r["path"]: r["moved_from"] for r in report["files"]["added"] if "moved_from" in r}
    assert moves == {
        "/app/config/defaults.json": "/app/settings/defaults.json",
        # the dist-info directory was renamed; these files kept their content
        f"{NEW_DIST}/INSTALLER": f"{OLD_DIST}/INSTALLER",
        f"{NEW_DIST}/WHEEL": f"{OLD_DIST}/WHEEL",
        f"{NEW_DIST}/top_level.txt": f"{OLD_DIST}/top_level.txt",
    }
    assert report["directories"]["added"] == ["/app/config", NEW_DIST]


def test_modified_means_other_content_mode_owner_or_target_never_just_a_new_mtime(pair, report):
    new_sizes = file_sizes(pair, "app-v2", "upgrade") | {"/etc/alternatives/editor": 0}
    expected = {
        "/app/main.py": ["content"],
        "/var/lib/dpkg/status": ["content"],
        "/lib/apk/db/installed": ["content"],
        "/app/run.sh": ["mode"],
        f"{SITE}/requests/__init__.py": ["content"],
        "/etc/alternatives/editor": ["target"],
    }
    modified = report["files"]["modified"]
    assert [(r["path"], r["new_size"]) for r in modified] == largest_first(list(expected), new_sizes)
    assert {r["path"]: r["changes"] for r in modified} == expected
    editor = next(r for r in modified if r["kind"] == "symlink")
    assert (editor["old_target"], editor["new_target"]) == ("/usr/bin/vi", "/usr/bin/nano")
    # requests/client.py and every directory were written again by the upper layer, unchanged
    assert f"{SITE}/requests/client.py" not in {r["path"] for r in modified}
    assert report["directories"]["modified"] == []


def test_packages_come_from_dpkg_apk_and_dist_info_and_removed_conffiles_are_not_installed(report):
    assert report["package_databases"] == ["deb", "apk", "python"]
    assert report["packages"] == PACKAGE_CHANGES


def test_config_changes_per_env_variable_and_label_and_per_value(report):
    assert report["config"] == [
        {"key": "Env", "name": "APP_VERSION", "old": "1.0", "new": "1.1"},
        {"key": "Env", "name": "DEBUG", "old": "1", "new": None},
        {"key": "Env", "name": "LOG_LEVEL", "old": None, "new": "info"},
        {"key": "Labels", "name": "org.opencontainers.image.version", "old": "1.0", "new": "1.1"},
        {"key": "Entrypoint", "name": None, "old": None, "new": ["/usr/bin/tini", "--"]},
        {"key": "Cmd", "name": None, "old": ["python3", "app/main.py"], "new": ["python3", "-m", "app"]},
        {"key": "WorkingDir", "name": None, "old": "/app", "new": "/srv/app"},
        {"key": "User", "name": None, "old": "app", "new": "1000:1000"},
        {"key": "ExposedPorts", "name": None, "old": ["8080/tcp"], "new": ["8080/tcp", "8443/tcp"]},
        {"key": "Volumes", "name": None, "old": None, "new": ["/data"]},
        {"key": "Healthcheck", "name": None, "old": None,
         "new": {"Test": ["CMD", "/usr/bin/curl", "-f", "http://localhost:8080/health"], "Interval": 30000000000}},
    ]


def test_the_text_report_says_the_same(report, text):
    old, new = report["old"]["image_id"][:19], report["new"]["image_id"][:19]
    assert text[0] == f"deltaimg/shop:1.0 {old} → deltaimg/shop:1.1 {new}"
    assert text[1].endswith("; 1 reused, 1 changed, 1 new, 0 dropped")
    assert [line.split()[4:] for line in text[2:5]] == [["reused", "(old", "layer", "0)"],
                                                        ["changed", "(old", "layer", "1)"], ["new"]]
    summary = report["summary"]
    assert text[5] == (f"files: 7 added ({human_size(summary['added_bytes'])}), "
                       f"11 removed ({human_size(summary['removed_bytes'])}), "
                       f"6 modified (+{human_size(summary['modified_bytes'])}); directories: 2 added, 2 removed, 0 modified")
    files = text[6:30]
    assert "  + /app/config/defaults.json 31 B, moved from /app/settings/defaults.json" in files
    assert "  + /app/cache/fresh.bin 20 B" in files
    assert "  - /app/docs/README 15 B" in files
    assert "  ~ /app/run.sh 35 B (mode)" in files
    assert "  ~ /lib/apk/db/installed 608 B (content)" in files
    assert "  ~ /var/lib/dpkg/status 1.9 KB (+16 B, content)" in files
    assert "  ~ /etc/alternatives/editor (symlink; target /usr/bin/vi → /usr/bin/nano)" in files
    assert [line[2] for line in files] == ["+"] * 7 + ["-"] * 11 + ["~"] * 6
    assert "\n".join(text[30:]) == PACKAGE_TEXT + "\n" + CONFIG_TEXT


def test_limit_shortens_each_file_list_and_says_how_many_more(archives):
    lines = run_cli("diff", *map(str, archives), "--limit", "2").stdout.splitlines()
    assert sum(line.startswith("  + ") for line in lines) == 2
    assert "  ... and 5 more added (--limit 0 or --json shows all)" in lines
    assert "  ... and 9 more removed (--limit 0 or --json shows all)" in lines
    assert "  ... and 4 more modified (--limit 0 or --json shows all)" in lines


def test_any_image_reference_the_tool_reads_gives_the_same_report(pair, report, tmp_path):
    oci = tmp_path / "shop-1.0"
    f.write_oci_dir(oci, [pair.v1], compression="gzip")
    gzipped_new = tmp_path / "shop-1.1.oci.tar"
    f.write_oci_archive(gzipped_new, [pair.v2], compression="zstd")
    result = run_cli("diff", f"oci:{oci}:deltaimg/shop:1.0", f"oci-archive:{gzipped_new}", "--json")
    assert result.returncode == 0, result.stderr
    other = json.loads(result.stdout)
    for key in ("layers", "dropped_layers", "files", "directories", "summary", "packages", "config"):
        assert other[key] == report[key], key


def test_an_image_against_itself_has_no_changes(archives):
    old = str(archives[0])
    result = run_cli("diff", old, f"docker-archive:{old}", "--json")
    same = json.loads(result.stdout)
    assert [layer["status"] for layer in same["layers"]] == ["reused", "reused"]
    assert same["files"] == {"added": [], "removed": [], "modified": []}
    assert (same["packages"], same["config"]) == ([], [])
    text = run_cli("diff", old, old).stdout.splitlines()
    assert text[-2:] == ["packages: no changes (Debian packages, Alpine packages, Python distributions read)",
                         "config: no changes"]


def test_an_old_layer_nothing_replaces_is_dropped(pair, tmp_path):
    os_layer, app_v1 = pair.v1.layers
    upgrade = pair.v2.layers[2]
    old = f.write_docker_archive(tmp_path / "a.tar", [f.ImageSpec([os_layer, app_v1], ["a:1"])])[0].path
    new = f.write_docker_archive(tmp_path / "b.tar", [f.ImageSpec([app_v1, upgrade], ["a:2"])])[0].path
    report = json.loads(run_cli("diff", str(old), str(new), "--json").stdout)
    assert [(layer["status"], layer["old_index"]) for layer in report["layers"]] == [("reused", 1), ("new", None)]
    assert report["dropped_layers"] == [{"index": 0, "diff_id": os_layer.diff_id, "size": os_layer.size}]
    assert "/etc/os-release" in {r["path"] for r in report["files"]["removed"]}


def test_a_missing_image_is_one_line_and_exit_code_3(archives):
    result = run_cli("diff", "/nonexistent/old.tar", str(archives[1]))
    assert result.returncode == 3
    assert result.stderr.startswith("deltaimg: error: /nonexistent/old.tar: no such file") and result.stderr.count("\n") == 1


BIG_FILE = 128 << 20


def test_file_contents_are_streamed_not_held(tmp_path):
    """Two images whose one file is 128 MiB: diff peaks far below that size (Python alone takes ~45 MiB)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as out:
        out.truncate(BIG_FILE)
    bigger = tmp_path / "bigger.bin"  # the same size, its first bytes patched
    with open(bigger, "wb") as out:
        out.truncate(BIG_FILE)
        out.write(b"patched")
    layer = lambda name, path: f.write_layer(tmp_path / name, f.complete_tree([f.file("data/blob.bin", path)]))  # noqa: E731
    old = f.write_docker_archive(tmp_path / "old.tar", [f.ImageSpec([layer("v1.tar", big)], ["big:1"])])[0].path
    new = f.write_docker_archive(tmp_path / "new.tar", [f.ImageSpec([layer("v2.tar", bigger)], ["big:2"])])[0].path
    for path in ("v1.tar", "v2.tar", "big.bin", "bigger.bin"):
        os.unlink(tmp_path / path)
    outcome = measured("diff", str(old), str(new), "--json")
    assert outcome.returncode == 0, outcome.stderr
    modified = json.loads(outcome.stdout)["files"]["modified"]
    assert [(r["path"], r["new_size"], r["changes"]) for r in modified] == [("/data/blob.bin", BIG_FILE, ["content"])]
    assert outcome.peak_rss < BIG_FILE * 3 // 4, f"diff peaked at {outcome.peak_rss >> 20} MiB"


@pytest.fixture(scope="module")
def edge(tmp_path_factory) -> tuple[Path, list[f.LayerFile]]:
    tmp = tmp_path_factory.mktemp("edge")
    return tmp, list(f.build_edge_image(tmp).layers)


def diff_layers(tmp: Path, old: list[f.LayerFile], new: list[f.LayerFile]) -> dict:
    a = f.write_docker_archive(tmp / "old.tar", [f.ImageSpec(old, ["edge:old"])])[0].path
    b = f.write_docker_archive(tmp / "new.tar", [f.ImageSpec(new, ["edge:new"])])[0].path
    result = run_cli("diff", str(a), str(b), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_go_gnu_and_pax_tars_of_the_same_tree_read_as_the_same_filesystem(edge, tmp_path):
    """Long names (USTAR prefix, PAX path, GNU LongLink), devices, hard links, xattrs, odd modes."""
    _, (go, _upper, _empty, gnu, python_pax, *_rest) = edge
    report = diff_layers(tmp_path, [go], [go, gnu, python_pax])
    assert report["files"] == {"added": [], "removed": [], "modified": []}
    assert report["directories"] == {"added": [], "removed": [], "modified": []}


def test_whiteouts_of_a_file_and_a_directory_and_an_opaque_directory_refilled(edge, tmp_path):
    _, (go, upper, *_rest) = edge
    report = diff_layers(tmp_path, [go], [go, upper])
    assert [r["path"] for r in report["files"]["added"]] == ["/usr/share/i18n/replacement.txt"]
    assert [(r["path"], r["kind"]) for r in report["files"]["removed"]] == [
        ("/etc/motd", "file"), ("/" + f.UNICODE_NAME, "file"), ("/run/initctl", "fifo")]
    assert report["directories"]["removed"] == ["/run"]


def test_a_dropped_file_capability_or_a_new_owner_is_a_modification(edge, tmp_path):
    _, (go, *_rest) = edge
    ping = next(e for e in f.edge_case_entries() if e.name == "usr/bin/ping")
    motd = next(e for e in f.edge_case_entries() if e.name == "etc/motd")
    changed = f.write_layer(tmp_path / "changed.tar", f.complete_tree([
        f.file(ping.name, ping.content, mode=ping.mode), f.file(motd.name, motd.content, uid=1000, gid=1000)]))
    report = diff_layers(tmp_path, [go], [go, changed])
    # the upper layer's motd is a new inode: the lower layer's hard link to the old one is unchanged
    assert {r["path"]: r["changes"] for r in report["files"]["modified"]} == {
        "/usr/bin/ping": ["xattrs"], "/etc/motd": ["owner"]}
