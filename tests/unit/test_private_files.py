"""Private files (keys, passwords, connection URLs) are 0600 from creation and never
written through a link, whoever writes them: the shared writer and its callers."""

from __future__ import annotations

import base64
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tieline.plumbing.files import create_file, replace_file
from tieline.services.runtime.deploy_secrets import write_env_file
from tieline.services.runtime.errors import OperationalError
from tieline.services.runtime.nats_auth import load_or_create_passwords
from tieline.services.runtime.supervisor import Stack, StackConfig


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask of 0: a writer that relied on the umask would make world-readable files."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_created_and_replaced_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    created, replaced = tmp_path / "created", tmp_path / "replaced"
    create_file(created, b"one")
    replaced.write_bytes(b"old")
    replaced.chmod(0o644)
    replace_file(replaced, b"new")
    assert (created.read_bytes(), _mode(created)) == (b"one", 0o600)
    assert (replaced.read_bytes(), _mode(replaced)) == (b"new", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["created", "replaced"]  # no staging


def test_create_file_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "key"
    create_file(path, b"first")
    with pytest.raises(FileExistsError):
        create_file(path, b"second")
    assert path.read_bytes() == b"first"


def test_no_write_follows_a_symbolic_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        create_file(link, b"planted")
    replace_file(link, b"replaced")  # the rename replaces the link itself
    assert victim.read_bytes() == b"untouched"
    assert not link.is_symlink() and link.read_bytes() == b"replaced"


def test_large_contents_are_written_whole(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    replace_file(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


@pytest.mark.usefixtures("open_umask")
def test_callers_write_private_files(tmp_path: Path) -> None:
    env = tmp_path / "deploy" / "tieline.env"
    write_env_file(env, {"A": "1"})
    with pytest.raises(FileExistsError):
        write_env_file(env, {"A": "2"})
    write_env_file(env, {"A": "3"}, force=True)
    passwords = tmp_path / "secrets" / "nats.json"
    created = load_or_create_passwords(passwords)
    assert load_or_create_passwords(passwords) == created
    assert env.read_text().endswith("A=3\n")
    assert (_mode(env), _mode(passwords)) == (0o600, 0o600)


@pytest.mark.usefixtures("open_umask")
def test_the_stack_master_key_is_private_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIELINE_MASTER_KEY", raising=False)
    stack = Stack(StackConfig(data_dir=tmp_path))
    key = stack.master_key()
    path = tmp_path / "secrets" / "master.key"
    assert (_mode(path), stack.master_key()) == (0o600, key)
    assert len(base64.b64decode(key)) == 32


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from tieline.plumbing.files import create_file
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))
try:
    create_file(Path(sys.argv[1]), b"x" * 44)
except OSError as exc:
    print(exc.errno)
"""


def test_a_file_that_cannot_be_written_whole_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "key"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(errno.EFBIG)
    assert list(tmp_path.iterdir()) == []  # neither a truncated key nor a staged file
    create_file(path, b"whole")  # and the next try is not refused
    assert path.read_bytes() == b"whole"


def test_an_empty_master_key_file_is_an_error_not_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIELINE_MASTER_KEY", raising=False)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "master.key").write_text("\n")
    with pytest.raises(OperationalError, match="is empty"):
        Stack(StackConfig(data_dir=tmp_path)).master_key()


def test_make_dirs_makes_each_new_directory_private_and_its_entry_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tieline.plumbing import files

    synced: list[Path] = []
    real = files.sync_directory
    monkeypatch.setattr(files, "sync_directory", lambda d: (synced.append(d), real(d))[1])
    target = tmp_path / "data" / "secrets"
    files.make_dirs(target)
    assert synced == [tmp_path, tmp_path / "data"]  # each new entry, in its parent
    assert all((p.stat().st_mode & 0o777) == 0o700 for p in (target, target.parent))
    synced.clear()
    files.make_dirs(target)  # there already: nothing to make
    assert synced == []


def test_logs_are_appended_to_privately_and_never_through_a_link(tmp_path: Path) -> None:
    from tieline.plumbing.files import append_private

    old = tmp_path / "api.log"
    old.write_text("before\n")
    old.chmod(0o644)  # what an earlier version made
    with append_private(old) as out:
        out.write(b"after\n")
    assert old.read_text() == "before\nafter\n"
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "linked.log").symlink_to(target)
    with pytest.raises(OSError):
        append_private(tmp_path / "linked.log")
    assert target.read_text() == ""


def test_postgres_gets_none_of_the_supervisors_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its /proc/<pid>/environ is readable by its user (``nobody`` when none can be made),
    and a database superuser reaches it with COPY ... FROM PROGRAM."""
    from tieline.services.runtime.embedded import EmbeddedPostgres

    monkeypatch.setenv("TIELINE_MASTER_KEY", "secret-key")
    monkeypatch.setenv("TIELINE_ADMIN_TOKEN", "tl_x_secret")
    monkeypatch.setenv("PGPASSWORD", "pg")
    env = EmbeddedPostgres(tmp_path, port=1)._child_env()
    assert env["LC_ALL"] == "C" and env.get("PATH") == os.environ.get("PATH")
    assert not any("secret" in value or value == "pg" for value in env.values())
    assert not any(k.startswith(("TIELINE_", "PG")) for k in env)
