"""The Emmett peer (``@event-driven-io/emmett`` + ``emmett-postgresql`` 0.42, TypeScript library
on Node) for ``python -m bench peer``: the script is ``bench/peer_emmett/peer.mjs``.

Its npm packages come from the registry with the committed lockfile: ``npm ci`` runs once into
a cache directory named after the lockfile's hash (``bench/peer_emmett/node_modules`` is used
instead when a developer installed it there). Each run gets a database of its own on the same
PostgreSQL server (created here, dropped afterwards), so Emmett's tables never meet tieline's.
Without ``node`` or ``npm`` the peer is not run and :func:`unavailable` says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

PEER_DIR = Path(__file__).resolve().parent / "peer_emmett"
FILES = ("package.json", "package-lock.json", "peer.mjs")


def unavailable() -> str | None:
    """Why the Emmett peer cannot run here (``None`` when ``node`` and ``npm`` are on PATH)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH: the Emmett peer was not run"
    return None


def cache_dir() -> Path:
    """Where ``npm ci`` installs the lockfile's packages (one directory per lockfile)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256((PEER_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    return base / "tieline-bench" / f"peer_emmett-{digest}"


def install(timeout_s: float = 600) -> Path:
    """A directory holding the script next to its installed ``node_modules``."""
    if (PEER_DIR / "node_modules" / "@event-driven-io" / "emmett-postgresql").is_dir():
        return PEER_DIR
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(PEER_DIR / name, target / name)
    if not (target / "node_modules" / "@event-driven-io" / "emmett-postgresql").is_dir():
        print(f"[peer] npm ci into {target} ...", flush=True)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            check=True,
            timeout=timeout_s,
        )
    return target


def with_database(database_url: str, name: str) -> str:
    """``database_url`` pointing at database ``name`` on the same server."""
    u = urlparse(database_url)
    return urlunparse(u._replace(path=f"/{name}"))


def run_emmett(
    database_url: str,
    meetings: list[tuple[str, str, int]],
    sequential: int,
    *,
    in_flight: int = 16,
    idle_ms: int = 5000,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Append ``meetings`` (pair and minutes) with Emmett, the first ``sequential`` one at a
    time and the rest with ``in_flight`` appends in flight, then catch its two async
    projections up from zero; return the script's JSON (counts, seconds, projected totals)."""
    import psycopg

    where = install()
    db = f"tieline_emmett_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        payload = {
            "connectionString": with_database(database_url, db),
            "meetings": meetings,
            "sequential": sequential,
            "inFlight": in_flight,
            "idleMs": idle_ms,
        }
        done = subprocess.run(
            ["node", "peer.mjs"],
            cwd=where,
            input=json.dumps(payload).encode(),
            capture_output=True,
            check=False,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"Emmett peer failed: {done.stderr.decode()[-2000:]}")
        out: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    out["appended"] = len(meetings)
    return out


def as_pairs(meetings: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """The bench's client-form meetings as (person, person, minutes) for the script."""
    return [(m["participants"][0], m["participants"][1], m["duration_minutes"]) for m in meetings]
