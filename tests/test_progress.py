"""Progress bars: bytes and rate on a terminal's stderr; nothing in cron, in pipes, with --quiet or --json."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time

import pytest

from deltaimg import progress
from deltaimg.images import open_image
from deltaimg.images.model import layer_bytes
from tests import imagefactory as f

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_disabled_bar_is_a_silent_no_op(capsys):
    with progress.bar("make", 100, enabled=False) as advance:
        advance(50)
    assert capsys.readouterr() == ("", "")


def test_without_a_terminal_there_is_no_bar(capsys):
    assert not sys.stderr.isatty()
    with progress.bar("make", 100, enabled=True) as advance:
        advance(50)
    assert capsys.readouterr() == ("", "")


def test_on_a_terminal_the_bar_shows_bytes_and_rate_on_stderr(monkeypatch, capsys):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    with progress.bar("make", 3_000_000, enabled=True) as advance:
        advance(1_000_000)
        time.sleep(0.05)
        advance(1_000_000)
    drawn = ANSI.sub("", terminal.getvalue())
    assert "make" in drawn and "2.0/3.0 MB" in drawn
    assert re.search(r"\d+(\.\d+)? [kMG]?B/s", drawn), drawn
    assert capsys.readouterr().out == ""


def test_metered_writes_every_block_and_reports_its_length():
    written: list[bytes] = []
    done: list[int] = []
    write = progress.metered(written.append, done.append)
    write(b"abc")
    write(b"de")
    assert (written, done) == ([b"abc", b"de"], [3, 2])


def test_layer_bytes_is_exact_for_stored_layers_and_unknown_for_compressed_ones(tmp_path):
    layer = f.write_layer(tmp_path / "l.tar", f.complete_tree([f.file("etc/motd", b"hello\n")]))
    spec = f.ImageSpec([layer, layer], ["motd:1"])
    archive = f.write_docker_archive(tmp_path / "motd.tar", [spec])[0].path
    assert layer_bytes(open_image(str(archive)).layers) == layer.size  # the same layer counts once
    f.write_oci_dir(tmp_path / "oci", [spec], compression="gzip")
    assert layer_bytes(open_image(f"oci:{tmp_path / 'oci'}").layers) is None


def test_commands_are_silent_on_stderr_when_it_is_not_a_terminal(example_pair, keypair, tmp_path):
    from tests.conftest import run_cli

    make = run_cli("make", *example_pair, "-o", str(tmp_path / "b.dimg"), "--key", keypair[0])
    diff = run_cli("diff", *example_pair)
    assert (make.returncode, make.stderr, diff.returncode, diff.stderr) == (0, "", 0, "")


def on_terminal(*args: str) -> str:
    """Run the CLI with stderr on a pseudo-terminal (stdout discarded); return what reached the terminal."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "deltaimg", *args], stdout=subprocess.DEVNULL, stderr=slave,
                               env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
    os.close(slave)
    received = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed its end
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    assert process.wait(timeout=120) == 0, received
    return ANSI.sub("", received.decode("utf-8", "replace"))


@pytest.mark.parametrize("command", ["make", "diff"])
def test_on_a_real_terminal_a_bar_is_drawn_and_quiet_silences_it(command, example_pair, keypair, tmp_path):
    args = [command, *example_pair] + (["-o", str(tmp_path / "b.dimg"), "--key", keypair[0]] if command == "make" else [])
    drawn = on_terminal(*args)
    assert command in drawn and re.search(r"\d+(\.\d+)? [kMG]?B/s", drawn), drawn
    assert on_terminal(*args, "--quiet") == ""


def test_apply_tells_its_progress_callback_every_byte_of_every_layer_it_writes(example_bundle, example_pair, keypair,
                                                                                tmp_path):
    from deltaimg.apply.archive import apply_to_archive
    from deltaimg.apply.rebuild import read_rebuild, rebuild_size
    from deltaimg.bundle.reader import open_bundle
    from deltaimg.bundle.keys import trusted_keys
    from tests.conftest import archive_image

    bundle = open_bundle(example_bundle, trusted_keys([keypair[1]], None))
    done: list[int] = []
    apply_to_archive(bundle, open_image(example_pair[0]), str(tmp_path / "new.tar"), advance=done.append)
    _, layers = archive_image(str(tmp_path / "new.tar"))
    assert len(done) > len(layers)  # block by block, not once per layer
    assert sum(done) == rebuild_size(read_rebuild(bundle)) == sum(len(layer) for layer in layers)


def test_apply_is_silent_on_stderr_when_it_is_not_a_terminal(example_bundle, example_pair, keypair, tmp_path):
    from tests.conftest import run_cli

    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(tmp_path / "n.tar"))
    assert (result.returncode, result.stderr) == (0, "")


def test_on_a_real_terminal_apply_draws_its_bar_and_quiet_silences_it(example_bundle, example_pair, keypair, tmp_path):
    args = ["apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(tmp_path / "n.tar"),
            "--force"]
    drawn = on_terminal(*args)
    assert "apply" in drawn and re.search(r"\d+(\.\d+)? [kMG]?B/s", drawn), drawn
    assert on_terminal(*args, "--quiet") == ""
