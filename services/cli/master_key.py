"""``tieline master-key rotate|rewrap``: a new master key without losing what the old one
sealed (docs/operations.md, "Rotate secrets"; services/keys/rewrap.py).

For ``tieline up``: stop it, ``tieline master-key rotate --data-dir D``, start it again (its
processes get the new key and, as ``TIELINE_MASTER_KEY_PREVIOUS``, the old one), then
``tieline master-key rewrap --data-dir D``. For a deployment: set the new key as
``TIELINE_MASTER_KEY`` and the old as ``TIELINE_MASTER_KEY_PREVIOUS`` everywhere, restart, run
``tieline master-key rewrap`` with the same two settings, then drop the previous key.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tieline.services.cli.client import AsJson, emit_json, out
from tieline.services.cli.ops import DataDir, ops_settings, run_db

if TYPE_CHECKING:
    from tieline.plumbing.crypto import MasterKey

console = Console()
err = Console(stderr=True)

app = typer.Typer(
    help="Rotate the master key that seals person keys, webhook secrets and sync passwords.",
    no_args_is_help=True,
)


@app.command("rotate")
def rotate(
    data_dir: Annotated[
        Path, typer.Option(help="Data dir of a stopped `tieline up` whose key to replace.")
    ],
) -> None:
    """Make a new master key for a `tieline up` data dir (stopped); the old key is kept as a
    previous key, which still opens what it sealed until `tieline master-key rewrap`."""
    from tieline.plumbing.crypto import master_key_from_env
    from tieline.services.runtime.installation import kept_stopped
    from tieline.services.runtime.master_key import KEY_FILE, rotate_key_files

    if os.environ.get("TIELINE_MASTER_KEY"):
        # tieline up would go on using that key, not the file's (a reviewer's finding).
        err.print(
            "TIELINE_MASTER_KEY is set: tieline up uses it, not the data dir's key file. "
            "Rotate it as for a deployment (docs/operations.md), or unset it.",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if not (data_dir / KEY_FILE).exists():
        err.print(f"no master key at {data_dir / KEY_FILE}: nothing to rotate", soft_wrap=True)
        raise typer.Exit(1)
    with kept_stopped(data_dir) as pid:  # and no tieline up starts until the files are written
        if pid is not None:
            # Its processes would go on sealing under the old key as their current one.
            err.print(
                f"tieline up is running on {data_dir} (pid {pid}): stop it first", soft_wrap=True
            )
            raise typer.Exit(1)
        written = master_key_from_env(rotate_key_files(data_dir))
    assert written is not None
    fingerprint = written.fingerprint()
    out(
        f"new master key written (fingerprint {fingerprint}); the old one is kept as a "
        "previous key. Start tieline up, then run: tieline master-key rewrap --data-dir "
        f"{data_dir} --expect-fingerprint {fingerprint}"
    )


def _keys(data_dir: Path | None, current: str | None, previous: str | None) -> MasterKey:
    """The master key to re-seal under: TIELINE_MASTER_KEY, else the data dir's; previous
    keys from TIELINE_MASTER_KEY_PREVIOUS and the data dir's both (a restored backup's old
    key, given in the environment, was ignored beside the data dir: a reviewer's finding)."""
    from tieline.plumbing.crypto import master_key_from_env
    from tieline.services.runtime.master_key import read_key_files

    if data_dir is not None:
        in_files = read_key_files(data_dir)
        if current and in_files[0] and current != in_files[0]:
            # Unwrapped person keys would be wrapped under a key tieline up does not have.
            err.print(
                f"TIELINE_MASTER_KEY is not the key of {data_dir}: unset it to use the data "
                "dir's keys",
                soft_wrap=True,
            )
            raise typer.Exit(2)
        current = current or in_files[0]
        previous = ",".join(k for k in (in_files[1], previous) if k) or None
    if not current:
        err.print("no master key: set TIELINE_MASTER_KEY (and TIELINE_MASTER_KEY_PREVIOUS)")
        raise typer.Exit(2)
    try:
        key = master_key_from_env(current, previous)
    except ValueError as exc:
        err.print(str(exc), soft_wrap=True)
        raise typer.Exit(2) from None
    assert key is not None  # current is set
    return key


@app.command("rewrap")
def rewrap_cmd(
    data_dir: DataDir = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only count what is left to re-seal; write nothing.")
    ] = False,
    expect_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--expect-fingerprint",
            help="Refuse (exit 2, nothing written) unless the key it would seal under has "
            "this fingerprint: the first 16 hex digits of the new key's SHA-256, as "
            '`rotate` prints it or `printf %s "$KEY" | base64 -d | sha256sum | cut -c1-16`.',
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Re-seal every value still under a previous master key (and person keys stored
    unwrapped) under the current one, then verify. Exit 0 when everything opens under the
    current key alone (the previous key can go), 1 otherwise."""
    from tieline.services.keys.rewrap import rewrap, verify

    settings = ops_settings(data_dir, "tieline master-key rewrap")
    key = _keys(data_dir, settings.master_key, settings.master_key_previous)
    _refuse_another_key(key, expect_fingerprint)

    async def go(conn: Any) -> tuple[list[Any], list[Any]]:
        done = [] if check else await rewrap(conn, key)
        return done, await verify(conn, key)

    done, left = run_db("tieline master-key rewrap", settings, go)
    clean = all(c.remaining == 0 and c.unreadable == 0 for c in left)
    retired = _retire_previous(data_dir) if clean and data_dir and not check else None
    if as_json:
        emit_json(
            {
                "current_key_fingerprint": key.fingerprint(),
                "resealed": {c.name: c.resealed for c in done},
                "verified": [dataclasses.asdict(c) for c in left],
                "previous_key_needed": not clean,
                "previous_key_retired_to": str(retired) if retired else None,
            }
        )
    else:
        out(f"current master key: fingerprint {key.fingerprint()}")
        _report(done, left)
        if retired:
            out(
                f"the previous keys are now in {retired}: the next tieline up starts without "
                "them. Keep that file with the backups taken before the rotation, which need "
                "it; delete it when they have expired."
            )
    if not clean:
        raise typer.Exit(1)


def _refuse_another_key(key: MasterKey, expected: str | None) -> None:
    """Exit 2 when ``--expect-fingerprint`` names another key than the one rewrap would seal
    under. Run where the first roll-out's keys are (the new key still the previous one), it
    would seal everything back under the old key: a check an operator's eye can miss."""
    if expected is None or expected.strip().lower() == key.fingerprint():
        return
    err.print(
        f"the current master key has fingerprint {key.fingerprint()}, not {expected.strip()}: "
        "this process does not run with the new key as its current one; nothing written",
        soft_wrap=True,
    )
    raise typer.Exit(2)


def _report(done: list[Any], left: list[Any]) -> None:
    table = Table("sealed values", "re-sealed now", "under the current key", "previous", "none")
    resealed = {c.name: c.resealed for c in done}
    for c in left:
        table.add_row(
            c.name,
            str(resealed.get(c.name, "-")),
            str(c.current),
            str(c.remaining),
            str(c.unreadable),
        )
    console.print(table)
    if any(c.unreadable for c in left):
        err.print(
            "[red]some values open under no key given[/]: add the key that sealed them to "
            "TIELINE_MASTER_KEY_PREVIOUS and run this again"
        )
    elif any(c.remaining for c in left):
        err.print("values changed while this ran are still under a previous key: run it again")
    else:
        out("every sealed value opens under the current master key alone")


def _retire_previous(data_dir: Path) -> Path | None:
    """Move the data dir's previous keys aside, where tieline up no longer reads them but a
    restored backup from before the rotation can still be opened (deleting them lost that:
    a reviewer's finding); the file they are now in, if there were any. Hard-linked to a
    name no file has (a rename replaced the keys retired by a rewrap in the same second: a
    reviewer's finding), then unlinked."""
    from datetime import UTC, datetime

    from tieline.plumbing.files import sync_directory
    from tieline.services.runtime.master_key import PREVIOUS_FILE

    path = data_dir / PREVIOUS_FILE
    stamp = f"master.key.retired-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    for n in itertools.count():
        retired = path.with_name(f"{stamp}-{n}" if n else stamp)
        try:
            os.link(path, retired)
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None  # none, or another rewrap retired them meanwhile
        break
    path.unlink(missing_ok=True)  # missing: a rewrap beside this one linked it too
    sync_directory(path.parent)
    return retired
