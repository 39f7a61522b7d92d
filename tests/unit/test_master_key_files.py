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
