"""make then apply rebuilds the very same image: same config bytes, every layer hashing to its diff_id."""

from __future__ import annotations

import json
import os
import stat

from deltaimg.errors import BaseMismatchError, BundleFormatError, DowngradeError, ImageReadError, KeyFileError, OutputError, UsageError
from deltaimg.images import open_image
from tests.conftest import archive_image, assert_same_image, run_cli


def test_the_example_pair_round_trips_through_the_command_line(example_pair, example_bundle, keypair, tmp_path):
    out = tmp_path / "app-1.1.tar"
    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out))
    assert result.returncode == 0, result.stderr
    new_config, _ = archive_image(example_pair[1])
    assert_same_image(str(out), new_config)
    assert "rebuilt" in result.stdout


def test_the_bundle_is_far_smaller_than_the_changed_layers(example_pair, example_bundle):
    _, layers = archive_image(example_pair[1])
    assert os.path.getsize(example_bundle) * 50 < sum(len(layer) for layer in layers)


def test_make_reports_in_json(example_pair, keypair, tmp_path):
    out = tmp_path / "b.dimg"
    result = run_cli("make", *example_pair, "-o", str(out), "--key", keypair[0], "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["bundle_size"] == os.path.getsize(out)
    assert [layer["method"] for layer in manifest["layers"]] == ["delta", "delta"]
    assert manifest["target"]["tags"] == ["example/app:1.1"]


def test_inspect_shows_base_target_signer_and_plan(example_bundle, keypair):
    result = run_cli("inspect", example_bundle)
    assert result.returncode == 0, result.stderr
    assert "example/app:1.0" in result.stdout and "example/app:1.1" in result.stdout
    assert "NOT verified" in result.stdout and "smaller" in result.stdout
    verified = run_cli("inspect", example_bundle, "--trust", keypair[1], "--json")
    assert json.loads(verified.stdout)["verified"] is True


def test_an_identical_image_needs_no_layer_payload(example_pair, keypair, tmp_path):
    out = tmp_path / "same.dimg"
    result = run_cli("make", example_pair[0], example_pair[0], "-o", str(out), "--key", keypair[0], "--json")
    manifest = json.loads(result.stdout)
    assert [layer["method"] for layer in manifest["layers"]] == ["base", "base"]
    assert [p["name"] for p in manifest["payloads"]] == ["config"]


def test_apply_against_the_wrong_base_is_refused_and_writes_nothing(example_pair, keypair, tmp_path):
    reverse = tmp_path / "reverse.dimg"
    assert run_cli("make", example_pair[1], example_pair[0], "-o", str(reverse), "--key", keypair[0]).returncode == 0
    out = tmp_path / "out.tar"
    result = run_cli("apply", str(reverse), "--trust", keypair[1], "--base", example_pair[0], "-o", str(out))
    assert result.returncode == BaseMismatchError.exit_code
    assert "updates image sha256:" in result.stderr and not out.exists()


def test_apply_refuses_to_overwrite_unless_forced(example_pair, example_bundle, keypair, tmp_path):
    out = tmp_path / "exists.tar"
    out.write_bytes(b"keep me")
    args = ["apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out)]
    assert run_cli(*args).returncode == OutputError.exit_code
    assert out.read_bytes() == b"keep me"
    assert run_cli(*args, "--force").returncode == 0
    assert oct(out.stat().st_mode & 0o777) == oct(0o644 & ~current_umask())  # as docker save > FILE would be


def test_apply_does_not_replace_a_device_even_forced_and_replaces_a_symlink_without_following_it(
        example_pair, example_bundle, keypair, tmp_path):
    args = ["apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "--force", "-o"]
    result = run_cli(*args, "/dev/null")
    assert result.returncode == OutputError.exit_code
    assert result.stderr == "deltaimg: error: /dev/null exists and is not a regular file; choose another -o\n"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    link = tmp_path / "link.tar"
    link.symlink_to("/dev/null")
    assert run_cli(*args, str(link)).returncode == 0
    assert not link.is_symlink() and link.is_file() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_make_refuses_an_existing_output_unless_forced_and_never_removes_a_file_it_did_not_write(
        example_pair, keypair, tmp_path):
    out = tmp_path / "app.dimg"
    out.write_bytes(b"precious")
    (tmp_path / "app.dimg.001").write_bytes(b"someone else's")
    args = ["make", *example_pair, "-o", str(out), "--key", keypair[0]]
    refused = run_cli(*args)
    assert refused.returncode == OutputError.exit_code
    assert refused.stderr == f"deltaimg: error: {out}, {out}.001 exist; pass --force to replace them, or choose another -o\n"
    assert out.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["app.dimg", "app.dimg.001"]

    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert out.read_bytes().startswith(b"DELTAIMG")
    assert (tmp_path / "app.dimg.001").read_bytes() == b"someone else's"  # not a bundle part: left alone
    assert oct(out.stat().st_mode & 0o777) == oct(0o644 & ~current_umask())


def test_a_forced_make_replaces_an_earlier_split_bundle_and_only_its_parts(example_pair, keypair, tmp_path):
    out = tmp_path / "app.dimg"
    split = run_cli("make", *example_pair, "-o", str(out), "--key", keypair[0], "--split-size", "1K")
    assert split.returncode == 0, split.stderr
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert len(parts) >= 2 and parts[0] == "app.dimg.001"
    (tmp_path / "app.dimg.notes").write_text("mine")
    whole = run_cli("make", *example_pair, "-o", str(out), "--key", keypair[0], "--force")
    assert whole.returncode == 0, whole.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.dimg", "app.dimg.notes"]


def test_make_does_not_replace_what_is_not_a_regular_file(example_pair, keypair, tmp_path):
    fifo = tmp_path / "pipe.dimg"
    os.mkfifo(fifo)
    result = run_cli("make", *example_pair, "-o", str(fifo), "--key", keypair[0], "--force")
    assert result.returncode == OutputError.exit_code
    assert result.stderr == f"deltaimg: error: {fifo} exists and is not a regular file; choose another -o\n"
    assert sorted(os.listdir(tmp_path)) == ["pipe.dimg"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_apply_into_an_archive_refuses_a_downgrade_unless_allowed(example_pair, keypair, tmp_path):
    back = tmp_path / "back.dimg"
    assert run_cli("make", example_pair[1], example_pair[0], "-o", str(back), "--key", keypair[0]).returncode == 0
    out = tmp_path / "old.tar"
    args = ["apply", str(back), "--trust", keypair[1], "--base", example_pair[1], "-o", str(out)]
    refused = run_cli(*args)
    assert refused.returncode == DowngradeError.exit_code == 25
    v1, v2 = (open_image(path).config_digest[:19] for path in example_pair)
    assert refused.stderr == (f"deltaimg: error: {back} goes back from example/app:1.1 {v2} (created 2024-01-02T00:00:00Z) "
                              f"to the older example/app:1.0 {v1} (created 2024-01-01T00:00:00Z); pass "
                              "--allow-downgrade to apply it anyway\n")
    assert not out.exists()
    allowed = run_cli(*args, "--allow-downgrade")
    assert allowed.returncode == 0, allowed.stderr
    assert open_image(str(out)).config_digest == open_image(example_pair[0]).config_digest


def test_bad_inputs_get_one_line_and_their_own_exit_code(example_pair, keypair, tmp_path):
    base, target = example_pair
    public_as_private = tmp_path / "release-key.pub"
    public_as_private.write_bytes(open(keypair[1], "rb").read())
    public_as_private.chmod(0o600)  # so that it is refused for what it is, not for its mode
    x, y = str(tmp_path / "x"), str(tmp_path / "y")
    cases = [
        (("make", "/nonexistent/a.tar", target, "-o", x, "--key", keypair[0]), ImageReadError,
         "/nonexistent/a.tar: no such file or directory (expected a docker save archive, an OCI layout, or docker-daemon:REF)"),
        (("make", base, target, "-o", x, "--key", "/nonexistent/key"), KeyFileError,
         "cannot read private key /nonexistent/key: No such file or directory"),
        (("make", base, target, "-o", x, "--key", str(public_as_private)), KeyFileError,
         f"{public_as_private} is not a usable private key (Valid PEM but no BEGIN/END delimiters for a private key "
         "found. Are you sure this is a private key?)"),
        (("apply", "/nonexistent.dimg", "--trust", keypair[1], "--base", base, "-o", y), BundleFormatError,
         "cannot read bundle /nonexistent.dimg: No such file or directory"),
        (("apply", base, "--trust", keypair[1], "--base", base, "-o", y), BundleFormatError,
         f"{base} is not a deltaimg bundle"),
        (("apply", base, "--trust", keypair[1], "--base", base), UsageError,
         "--base and --output go together (rebuild into an archive); give both or neither"),
        (("make", "docker-archive:" + str(tmp_path), target, "-o", x, "--key", keypair[0]), ImageReadError,
         f"{tmp_path}: not a docker save archive (no manifest.json)"),
    ]
    for args, error, message in cases:
        result = run_cli(*args)
        assert (result.returncode, result.stderr) == (error.exit_code, f"deltaimg: error: {message}\n"), args
        assert result.stdout == "", args
    assert sorted(os.listdir(tmp_path)) == ["release-key.pub"]


def test_a_private_key_readable_by_others_is_refused(example_pair, keypair, tmp_path):
    loose = tmp_path / "loose-key"
    loose.write_bytes(open(keypair[0], "rb").read())
    os.chmod(loose, 0o644)
    result = run_cli("make", *example_pair, "-o", str(tmp_path / "x"), "--key", str(loose))
    assert result.returncode == KeyFileError.exit_code and "chmod 600" in result.stderr


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path):
    result = run_cli("keygen", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "k.pub").read_bytes()
    assert run_cli("keygen", str(tmp_path / "k")).returncode == OutputError.exit_code


def test_a_full_disk_while_make_writes_is_an_output_error_not_a_damaged_image(example_pair, keypair, tmp_path, monkeypatch):
    import errno

    from deltaimg.bundle import writer
    from deltaimg.bundle import keys
    from deltaimg.images import open_image
    from deltaimg.make.build import make_bundle

    def full(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.HashingWriter, "write", full)
    output = tmp_path / "out.dimg"
    try:
        make_bundle(open_image(example_pair[0]), open_image(example_pair[1]), str(output), keys.signing_key(keypair[0], None))
    except OutputError as exc:
        assert "No space left on device" in str(exc) and str(output) in str(exc)
    else:
        raise AssertionError("make wrote a bundle on a full disk")
    assert not output.exists()


def test_apply_with_no_engine_to_reach_exits_20_on_one_line_and_writes_nothing(example_bundle, keypair, tmp_path):
    socket = tmp_path / "no-engine.sock"
    state = tmp_path / "state"
    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--state-dir", str(state),
                     env={"DOCKER_HOST": f"unix://{socket}"})
    assert result.returncode == 20
    assert result.stderr.startswith(f"deltaimg: error: cannot reach the Docker engine at unix://{socket} (")
    assert result.stderr.endswith("start dockerd (scripts/ensure-docker does) or point DOCKER_HOST at a running engine\n")
    assert result.stderr.count("\n") == 1
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")) == ["lock", "work"]  # no journal entry: nothing began


def test_engine_options_with_an_archive_rebuild_are_refused_instead_of_ignored(example_pair, example_bundle, keypair, tmp_path):
    out = tmp_path / "out.tar"
    result = run_cli("apply", example_bundle, "--trust", keypair[1], "--base", example_pair[0], "-o", str(out),
                     "--dry-run", "--no-swap")
    assert result.returncode == UsageError.exit_code
    assert result.stderr == ("deltaimg: error: --dry-run, --no-swap are for an apply into the engine; --base and --output "
                             "rebuild an archive and touch no engine: leave them out\n")
    assert not out.exists()
