"""The secrets of a deployment (deploy/): generated once into an ``.env`` file.

``tieline secrets init`` writes them. Docker Compose reads ``deploy/.env`` to fill the
``${VAR:?...}`` references in deploy/compose*.yaml, which hand each container only the secrets
it needs; on Kubernetes the same file becomes the ``tieline-secrets`` Secret
(``kubectl create secret generic tieline-secrets --from-env-file=...``, docs/operations.md).

What is in it:

``TIELINE_NATS_PASSWORD_<ROLE>``
    One per NATS user of services/runtime/nats_auth.py. nats-server reads all of them from its
    environment; each tieline process gets only its own as ``TIELINE_NATS_PASSWORD``.
``TIELINE_MASTER_KEY``
    base64 of 32 random bytes; wraps the per-person keys at rest (plumbing/crypto.py).
``POSTGRES_PASSWORD``
    The PostgreSQL password of the compose deployments (the ``postgres`` image creates the role
    with it). On Kubernetes CloudNativePG generates its own (``tieline-db-app``).
``TIELINE_ADMIN_TOKEN``
    The first admin token of workspace ``default``. ``tieline bootstrap`` registers it, so
    running the bootstrap again prints the same token instead of minting new ones.

Every value is URL- and shell-safe (letters, digits, ``-``, ``_``; base64 adds ``+/=``) and
holds no ``$``, which Compose would take for a variable reference.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from tieline.plumbing.files import create_file, replace_file
from tieline.services.runtime.nats_auth import ROLES, new_password, password_env_var

__all__ = [
    "OPTIONAL_SECRET_NAMES",
    "SECRET_NAMES",
    "generate_secrets",
    "read_env_file",
    "write_env_file",
]

#: Every variable ``tieline secrets init`` writes, in file order.
SECRET_NAMES: tuple[str, ...] = (
    *(password_env_var(role) for role in ROLES),
    "TIELINE_MASTER_KEY",
    "POSTGRES_PASSWORD",
    "TIELINE_ADMIN_TOKEN",
)

#: Variables the deployment reads when an operator has set them: the master key a rotation
#: replaced, while ``tieline master-key rewrap`` re-seals what it sealed (docs/operations.md).
OPTIONAL_SECRET_NAMES: tuple[str, ...] = ("TIELINE_MASTER_KEY_PREVIOUS",)

_HEADER = """\
# tieline deployment secrets, written by `tieline secrets init` (docs/operations.md).
# Keep this file private (mode 0600) and out of version control. Docker Compose reads it as
# deploy/.env; on Kubernetes: kubectl -n tieline create secret generic tieline-secrets \\
#   --from-env-file=<this file>
"""


def generate_secrets() -> dict[str, str]:
    """Fresh random values for every name in :data:`SECRET_NAMES`."""
    values = {password_env_var(role): new_password() for role in ROLES}
    values["TIELINE_MASTER_KEY"] = base64.b64encode(secrets.token_bytes(32)).decode()
    values["POSTGRES_PASSWORD"] = secrets.token_urlsafe(24)
    # The shape services/auth.py accepts: tl_<12 hex id>_<secret>.
    values["TIELINE_ADMIN_TOKEN"] = f"tl_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    return values


def write_env_file(path: Path, values: dict[str, str], *, force: bool = False) -> None:
    """Write ``values`` as ``NAME=value`` lines, mode 0600 from the first byte on.

    Refuses (FileExistsError) to replace an existing file unless ``force``: regenerating would
    lock every running component out of NATS and make the stored per-person keys unreadable.
    With ``force`` the new file is written beside the old one and renamed over it.
    """
    text = _HEADER + "".join(f"{name}={values[name]}\n" for name in values)
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        # Owned as the file it replaces: under sudo it became root's, and compose run as
        # its user could no longer read it (a reviewer's finding).
        st = path.stat()
        replace_file(path, text.encode(), (st.st_uid, st.st_gid))
    else:
        (replace_file if force else create_file)(path, text.encode())


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file (``#`` comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values
