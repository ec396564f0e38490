"""scripts/install-edge: the cron entry, systemd units and udev rule of docs/examples, installed under a root."""

from __future__ import annotations

import configparser
import os
import stat
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-edge"
UNITS = ("deltaimg-apply.service", "deltaimg-apply.timer", "deltaimg-stick@.service")


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)  # ExecStart= is repeated
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_it_installs_the_timer_the_stick_units_and_the_folders_under_a_root(tmp_path):
    result = install("--root", str(tmp_path), "--deltaimg", "/opt/deltaimg/bin/deltaimg")
    assert result.returncode == 0, result.stderr
    system = tmp_path / "etc/systemd/system"
    assert files_under(tmp_path) == {*(f"etc/systemd/system/{u}" for u in UNITS),
                                     "etc/udev/rules.d/99-deltaimg-stick.rules"}
    for directory in ("var/lib/deltaimg/inbox", "etc/deltaimg/trusted.d"):
        assert (tmp_path / directory).is_dir()
    for name in UNITS:
        assert stat.S_IMODE(os.stat(system / name).st_mode) == 0o644
        assert "/usr/local/bin/deltaimg" not in (system / name).read_text()
    service = unit(system / "deltaimg-apply.service")
    assert service["Service"]["ExecStart"] == \
        "/opt/deltaimg/bin/deltaimg apply /var/lib/deltaimg/inbox --wait 600 --log-format json --receipts"
    assert service["Service"]["Type"] == "oneshot" and service["Service"]["KillMode"] == "mixed"
    assert unit(system / "deltaimg-apply.timer")["Install"]["WantedBy"] == "timers.target"
    stick = unit(system / "deltaimg-stick@.service")
    assert stick["Unit"]["BindsTo"] == "dev-%i.device"
    rule = (tmp_path / "etc/udev/rules.d/99-deltaimg-stick.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="deltaimg-stick@%k.service"' in rule and 'ENV{ID_FS_LABEL}=="DELTAIMG"' in rule
    assert "systemctl" not in result.stdout  # nothing is enabled under a root
    assert "trusted.d" in result.stdout  # it says to copy the release key there


def test_with_cron_it_installs_a_cron_entry_instead(tmp_path):
    result = install("--root", str(tmp_path), "--cron", "--deltaimg", "/usr/bin/deltaimg")
    assert result.returncode == 0, result.stderr
    assert files_under(tmp_path) == {"etc/cron.d/deltaimg"}  # run-parts skips names with a dot
    [entry] = [line for line in (tmp_path / "etc/cron.d/deltaimg").read_text().splitlines()
               if line and not line.startswith("#") and "=" not in line.split()[0]]
    fields = entry.split()
    assert len(fields[:5]) == 5 and fields[5] == "root"
    assert fields[6:9] == ["/usr/bin/deltaimg", "apply", "/var/lib/deltaimg/inbox"]


def test_a_dry_run_says_what_it_would_do_and_writes_nothing(tmp_path):
    result = install("--root", str(tmp_path / "root"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "root").exists()
    assert "deltaimg-apply.timer" in result.stdout and "99-deltaimg-stick.rules" in result.stdout
    on_this_host = install("--dry-run")
    assert on_this_host.returncode == 0, on_this_host.stderr
    assert "run systemctl enable --now deltaimg-apply.timer" in on_this_host.stdout


def test_a_wrong_option_is_one_line_and_exit_2(tmp_path):
    result = install("--root", str(tmp_path), "--bogus")
    assert (result.returncode, result.stderr) == (2, "install-edge: unknown option --bogus (see --help)\n")
    relative = install("--root", str(tmp_path), "--deltaimg", "bin/deltaimg")
    assert relative.returncode == 2 and "absolute path" in relative.stderr
