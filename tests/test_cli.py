"""The command line as a person meets it: --version, help that names its values, one-line usage errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deltaimg import __version__
from tests.conftest import run_cli

COMMANDS = ["keygen", "make", "verify", "inspect", "diff", "apply", "status", "receipts", "demo", "version"]


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version_is_a_flag_and_a_command(argv):
    ran = run_cli(*argv)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, f"deltaimg {__version__}\n", "")


def test_help_lists_every_command_with_its_first_line_and_no_arguments_prints_it_as_a_usage_error():
    ran = run_cli("--help")
    assert (ran.returncode, ran.stderr) == (0, "")
    lines = ran.stdout.splitlines()
    assert lines[0] == "usage: deltaimg [--version] [--help] <command> [<args>]"
    listed = [line.split()[0] for line in lines[lines.index("commands:") + 1:] if line.startswith("  ")]
    assert listed == COMMANDS
    assert ("  make      Compare base and target images (one pair, or several) and write one signed bundle with what "
            "changed.") in lines
    bare = run_cli()
    assert (bare.returncode, bare.stdout) == (2, ran.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_names_its_values_as_git_and_skopeo_do(command):
    ran = run_cli(command, "--help")
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout.startswith(f"usage: deltaimg {command} ")
    for typer_style in ("<bool>", "<str>", "<int>", "<float>", "BOOLEAN", "TEXT", "FLOAT", "INTEGER"):
        assert typer_style not in ran.stdout


def test_make_and_diff_take_base_then_target():
    usage = {command: run_cli(command, "--help").stdout.split("\n\n")[0].split() for command in ("make", "diff")}
    assert usage["diff"][-2:] == ["BASE", "TARGET"]
    assert usage["make"][-5:] == ["BASE", "TARGET", "[BASE", "TARGET", "...]"]  # pairs: several images in one bundle


@pytest.mark.parametrize("argv, message", [
    (["bogus"], "no command 'bogus' (see deltaimg --help)"),
    (["--bogus"], "no option '--bogus' (see deltaimg --help)"),
    (["verify", "b.dimg", "--bogus"], "unrecognized arguments: --bogus (see deltaimg verify --help)"),
    (["status", "--limit", "many"], "argument --limit: invalid int value: 'many' (see deltaimg status --help)"),
])
def test_a_wrong_command_line_is_one_line_and_exit_code_2(argv, message):
    ran = run_cli(*argv)
    assert (ran.returncode, ran.stdout, ran.stderr) == (2, "", f"deltaimg: error: {message}\n")


def test_an_unexpected_exception_is_one_line_and_exit_1_without_a_traceback(tmp_path):
    """A bug (here a ZeroDivisionError planted in the image reader) still ends as one line."""
    program = ("import sys; import deltaimg.images as images; "
               "images.open_image = lambda *args: 1 / 0; "
               "from deltaimg.cli import main; sys.argv = ['deltaimg', 'diff', 'a.tar', 'b.tar']; main()")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "DELTAIMG_DEBUG"})
    assert result.returncode == 1
    assert result.stderr == ("deltaimg: error: unexpected ZeroDivisionError: division by zero; this is a bug in "
                             "deltaimg: please report it with the command line (DELTAIMG_DEBUG=1 prints where it "
                             "happened)\n")
    debug = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "DELTAIMG_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
