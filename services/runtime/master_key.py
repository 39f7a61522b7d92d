"""The master key files of a ``tieline up`` data dir, and turning them over for a rotation
(what the key seals, and re-sealing it: services/keys/rewrap.py)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from tieline.plumbing.files import replace_file

__all__ = ["KEY_FILE", "PREVIOUS_FILE", "new_key", "read_key_files", "rotate_key_files"]

#: Where ``tieline up`` keeps its master key, and during a rotation the keys it replaced
#: (comma-separated, newest first), relative to the data dir.
KEY_FILE = Path("secrets") / "master.key"
PREVIOUS_FILE = Path("secrets") / "master.key.previous"


def new_key() -> str:
    """A new master key: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def read_key_files(data_dir: Path) -> tuple[str | None, str | None]:
    """The data dir's master key and previous keys (None where there is no file)."""
    found = []
    for name in (KEY_FILE, PREVIOUS_FILE):
        path = data_dir / name
        found.append(path.read_text().strip() if path.exists() else None)
    return found[0], found[1]


def rotate_key_files(data_dir: Path) -> str:
    """Make a new key the data dir's master key; the one it replaces joins the previous keys
    (written first: a crash between the two writes leaves the old key current and also
    previous, which opens the same values). Returns the new key."""
    current, previous = read_key_files(data_dir)
    if not current:
        raise FileNotFoundError(data_dir / KEY_FILE)
    kept = [current, *(k for k in (previous or "").split(",") if k and k != current)]
    # Owned as the key they replace: rotated with sudo, root-owned files stopped a tieline up
    # that runs as its own user from starting (a reviewer's finding).
    st = (data_dir / KEY_FILE).stat()
    owner = (st.st_uid, st.st_gid)
    replace_file(data_dir / PREVIOUS_FILE, ",".join(kept).encode(), owner)
    key = new_key()
    replace_file(data_dir / KEY_FILE, key.encode(), owner)
    return key
