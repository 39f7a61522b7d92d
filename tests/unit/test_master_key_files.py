"""``tieline master-key rotate`` on a ``tieline up`` data dir: a new key, the old one kept as
a previous key that every process gets and that still opens what it sealed; refused while
the installation runs (its processes would go on sealing under the old key)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tieline.plumbing.crypto import master_key_from_env
from tieline.services.cli.main import app
from tieline.services.runtime.installation import DataDirLock
from tieline.services.runtime.master_key import KEY_FILE, PREVIOUS_FILE, read_key_files
from tieline.services.runtime.supervisor import Stack, StackConfig
from typer.testing import CliRunner


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.delenv("TIELINE_MASTER_KEY", raising=False)
    monkeypatch.delenv("TIELINE_MASTER_KEY_PREVIOUS", raising=False)
    return Stack(StackConfig(data_dir=tmp_path, nats_url="nats://x", database_url="postgresql://x"))


def _rotate(data_dir: Path) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["master-key", "rotate", "--data-dir", str(data_dir)])
    return done.exit_code, done.output


def test_rotate_keeps_the_old_keys_as_previous_ones(stack: Stack) -> None:
    data_dir = stack.config.data_dir
    first = stack.master_key()
    sealed = master_key_from_env(first)
    assert sealed is not None
    secret = sealed.seal("purpose", b"value")
    assert _rotate(data_dir)[0] == 0
    second = stack.master_key()
    assert second != first and read_key_files(data_dir) == (second, first)
    assert _rotate(data_dir)[0] == 0
    third, previous = read_key_files(data_dir)
    assert previous == f"{second},{first}"
    env = stack.child_env("api")
    assert (env["TIELINE_MASTER_KEY"], env["TIELINE_MASTER_KEY_PREVIOUS"]) == (third, previous)
    both = master_key_from_env(env["TIELINE_MASTER_KEY"], env["TIELINE_MASTER_KEY_PREVIOUS"])
    assert both is not None and both.unseal("purpose", secret) == b"value"
    assert (data_dir / PREVIOUS_FILE).stat().st_mode & 0o777 == 0o600


def test_no_previous_key_without_a_rotation(stack: Stack) -> None:
    stack.master_key()
    assert "TIELINE_MASTER_KEY_PREVIOUS" not in stack.child_env("api")


def test_rotate_is_refused_while_tieline_up_runs(stack: Stack) -> None:
    data_dir = stack.config.data_dir
    key = stack.master_key()
    lock = DataDirLock(data_dir)
    lock.acquire()
    try:
        code, output = _rotate(data_dir)
    finally:
        lock.release()
    assert code == 1 and "stop it first" in output
    assert (data_dir / KEY_FILE).read_text() == key and not (data_dir / PREVIOUS_FILE).exists()


def test_rotate_without_a_key_changes_nothing(tmp_path: Path) -> None:
    code, output = _rotate(tmp_path)
    assert code == 1 and "nothing to rotate" in output
    assert not (tmp_path / "secrets").exists()


def test_rotate_is_refused_when_tieline_up_takes_its_key_from_the_environment(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = stack.master_key()
    monkeypatch.setenv("TIELINE_MASTER_KEY", key)
    code, output = _rotate(stack.config.data_dir)
    assert code == 1 and "TIELINE_MASTER_KEY is set" in output
    assert not (stack.config.data_dir / PREVIOUS_FILE).exists()


def test_no_tieline_up_starts_while_rotate_writes_the_key_files(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rotate holds the data dir stopped while it writes: a tieline up starting between its
    check and its writes would hand its processes the old key, or a mix."""
    from tieline.services.runtime import master_key as files
    from tieline.services.runtime.errors import AlreadyRunning

    data_dir = stack.config.data_dir
    stack.master_key()
    starts: list[str] = []
    real = files.rotate_key_files

    def starting_meanwhile(path: Path) -> str:
        try:
            DataDirLock(data_dir).acquire()
        except AlreadyRunning:
            starts.append("refused")
        else:
            starts.append("started")
        return real(path)

    monkeypatch.setattr(files, "rotate_key_files", starting_meanwhile)
    assert _rotate(data_dir)[0] == 0
    assert starts == ["refused"]
    lock = DataDirLock(data_dir)  # once rotate is done, tieline up starts
    lock.acquire()
    lock.release()


def test_rotate_keeps_the_owner_of_the_key_it_replaces(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run with sudo on a tieline up of its own user, root-owned key files stopped it."""
    import os

    data_dir = stack.config.data_dir
    stack.master_key()
    owners: list[tuple[int, int] | None] = []
    real = os.fchown
    monkeypatch.setattr(os, "fchown", lambda fd, uid, gid: owners.append((uid, gid)))
    assert _rotate(data_dir)[0] == 0
    monkeypatch.setattr(os, "fchown", real)
    st = (data_dir / KEY_FILE).stat()
    assert owners == [(st.st_uid, st.st_gid)] * 2  # the previous keys' file and the new key's


def test_previous_keys_from_the_environment_count_beside_the_data_dirs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restored backup's old key given as TIELINE_MASTER_KEY_PREVIOUS to rewrap --data-dir
    and to tieline up (docs/operations.md) was dropped for the data dir's previous keys."""
    from tieline.services.cli.master_key import _keys
    from tieline.services.runtime.master_key import new_key

    data_dir = stack.config.data_dir
    old, restored = stack.master_key(), new_key()
    assert _rotate(data_dir)[0] == 0
    current = stack.master_key()
    key = _keys(data_dir, None, restored)
    expected = master_key_from_env(current, f"{old},{restored}")
    assert expected is not None
    assert (key.current, key.previous) == (expected.current, expected.previous)
    monkeypatch.setenv("TIELINE_MASTER_KEY_PREVIOUS", restored)
    assert stack.child_env("api")["TIELINE_MASTER_KEY_PREVIOUS"] == f"{old},{restored}"


def test_keys_retired_in_the_same_second_are_both_kept(stack: Stack) -> None:
    from tieline.services.cli.master_key import _retire_previous

    data_dir = stack.config.data_dir
    stack.master_key()
    retired, kept = [], []
    for _ in range(2):
        assert _rotate(data_dir)[0] == 0
        kept.append((data_dir / PREVIOUS_FILE).read_text())
        path = _retire_previous(data_dir)
        assert path is not None
        retired.append(path)
    assert [path.read_text() for path in retired] == kept
    assert not (data_dir / PREVIOUS_FILE).exists()
    assert _retire_previous(data_dir) is None
