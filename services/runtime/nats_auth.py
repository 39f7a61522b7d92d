"""Least-privilege NATS users: one per tieline process, each allowed only the subjects it uses.

``tieline up`` (services/runtime/supervisor.py) writes :func:`authorization_block` into the
embedded nats-server's configuration, keeps the generated passwords in
``<data_dir>/secrets/nats-passwords.json`` and starts every process as its own user; the
configurations in ``deploy/nats/`` carry the same block (:func:`deploy_authorization_block`)
with the passwords taken from the server's environment.

Why each permission exists (``P`` is the subject prefix, ``S`` the event stream's name):

``admin``
    Everything. Creates and updates the two streams before the other processes start, and is
    the operators' user. No tieline process runs as admin.

``api``
    Publishes command requests ``P.cmd.>`` to the write services and subscribes ``_INBOX.>``
    for their replies. ``$JS.API.STREAM.INFO.S`` answers ``/readyz`` (stream sequence) and,
    with ``...INFO.S_DLQ``, lets :func:`tieline.plumbing.jetstream.ensure_streams` confirm at
    start that the streams exist. It cannot publish events, read stream messages, or create
    streams or consumers: everything written goes through a write service that validates it.

``people`` / ``interactions``
    Subscribe to their own commands ``P.cmd.*.<service>.*``, and only in the queue group named
    after the service (replicas share the load; nobody else can join the group), and answer
    them through ``allow_responses`` (one reply to each request they received, on the reply
    subject it named, without a general publish right on ``_INBOX.>``). They publish only the
    event types they own: ``P.ev.*.person.>`` for people; ``P.ev.*.relationship.>``,
    ``P.ev.*.introduction.>``, ``P.ev.*.event.>`` (retractions) and ``P.ev.*.workspace.>``
    (model adoptions) for interactions. A JetStream publish is a request whose
    PubAck comes back on ``_INBOX.>``. ``$JS.API.STREAM.MSG.GET.S`` is the "does this person
    exist" check (last message on ``P.ev.<ws>.person.added.<id>``) and the re-sent
    ``person.added`` lookup; ``STREAM.INFO`` of both streams is the start-up check.

``worker``
    Consumes the event stream through its durable pull consumer: ``STREAM.INFO`` of both
    streams (start-up check), ``$JS.API.CONSUMER.INFO.S.>`` (nats-py's ``pull_subscribe`` asks
    whether the durable exists), ``$JS.API.CONSUMER.CREATE.S.>`` (creates it when missing;
    nats-py sends ``CONSUMER.CREATE.S.<durable>.<filter subject>`` to servers >= 2.9, so the
    legacy ``CONSUMER.DURABLE.CREATE`` is not granted), ``$JS.API.CONSUMER.MSG.NEXT.S.>``
    (fetch), ``$JS.ACK.S.>`` (ack and in-progress, sent to each message's reply subject) and
    ``_INBOX.>`` to receive fetched messages and PubAcks; ``$JS.API.STREAM.MSG.GET.S`` proves
    that a hole in the sequences a fetch returned holds no event (else the batch is refused
    and the log read again from the checkpoint). It parks poison events on
    ``P.dlq.>``, the subjects of the ``S_DLQ`` stream. It cannot publish events, so a bug in a
    projection cannot rewrite the log.

``webhooks``
    Reads the event stream through its one durable pull consumer, named ``webhooks``
    (services/webhooks/app.py), and through nothing else: ``STREAM.INFO`` of both streams
    (start-up check), ``$JS.API.CONSUMER.INFO.S.webhooks`` and
    ``$JS.API.CONSUMER.CREATE.S.webhooks.>`` (nats-py looks the durable up, and creates it with
    its filter subject in the API subject when missing), ``$JS.API.CONSUMER.MSG.NEXT.S.webhooks``
    (fetch), ``$JS.ACK.S.webhooks.>`` (ack and in-progress) and its inbox. It publishes nothing
    on tieline's subjects: what it sends goes out over HTTP to the registered endpoints.

``sync``
    Sends commands to the write services like the API: publishes ``P.cmd.*.people.record`` and
    ``P.cmd.*.interactions.record`` and subscribes its inbox for the replies. It reads nothing
    of the streams and cannot publish events.

Inboxes are per user: every tieline process connects with ``inbox_prefix=_INBOX_<user>``
(``tieline.plumbing.jetstream.inbox_prefix``) and may subscribe only to ``_INBOX_<user>.>``, so
no process can listen to replies meant for another (fetched events, PubAcks, command replies).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tieline.plumbing.files import make_dirs, replace_file

__all__ = [
    "PASSWORDS_FILE",
    "ROLES",
    "Permissions",
    "authorization_block",
    "deploy_authorization_block",
    "load_or_create_passwords",
    "password_env_var",
    "permissions",
]

#: NATS users: the operator/bootstrap user and one per process role of services/runtime/run.py.
ROLES: tuple[str, ...] = (
    "admin",
    "api",
    "people",
    "interactions",
    "worker",
    "webhooks",
    "sync",
)

#: Where ``tieline up`` keeps the generated passwords, relative to its data directory.
PASSWORDS_FILE = Path("secrets") / "nats-passwords.json"


#: Inbox subjects nats-py (and FastStream on top of it) use for replies to its requests.
def _inbox(role: str) -> str:
    """The only inbox subjects ``role`` may subscribe to (see ``inbox_prefix``)."""
    return f"_INBOX_{role}.>"


@dataclass(frozen=True)
class Permissions:
    """What one NATS user may do. ``subscribe`` entries may name a queue group after a space
    (``"subject queue"``): the user may then subscribe only within that group."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: Allow one reply to each request received (on its reply subject), without publish rights.
    allow_responses: bool = False


def new_password() -> str:
    """A random NATS password that nats-server reads back as a string wherever it stands.

    Deployment configs say ``password: $TIELINE_NATS_PASSWORD_X`` and nats-server parses the
    variable's *value* as a config token: a value starting with a digit or ``-`` is read as a
    number and fails ("Expected a digit but got 'q'"), one random password in about six with
    ``token_urlsafe``. A letter first and hex after is always a plain string.
    """
    return "p" + secrets.token_hex(24)


def permissions(role: str, prefix: str, stream: str) -> Permissions:
    """The permissions of ``role`` for subject prefix ``prefix`` and event stream ``stream``.

    See the module docstring for why each subject is there.
    """
    api = f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.INFO.{stream}_DLQ"
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    if role == "api":
        # STREAM.MSG.GET: read-only, used by the erasure report to prove no plaintext of a
        # forgotten person is left in the raw stream bytes. The API cannot publish events.
        return Permissions(
            publish=(f"{prefix}.cmd.>", *api, f"$JS.API.STREAM.MSG.GET.{stream}"),
            subscribe=(_inbox(role),),
        )
    if role in ("people", "interactions"):
        kinds = (
            ("person",)
            if role == "people"
            else ("relationship", "introduction", "event", "workspace")
        )
        events = tuple(f"{prefix}.ev.*.{kind}.>" for kind in kinds)
        return Permissions(
            publish=(*events, *api, f"$JS.API.STREAM.MSG.GET.{stream}"),
            subscribe=(f"{prefix}.cmd.*.{role}.* {role}", _inbox(role)),
            allow_responses=True,
        )
    if role == "worker":
        return Permissions(
            publish=(
                *api,
                f"$JS.API.CONSUMER.INFO.{stream}.>",
                f"$JS.API.CONSUMER.CREATE.{stream}.>",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
                f"$JS.ACK.{stream}.>",
                f"$JS.API.STREAM.MSG.GET.{stream}",
                f"{prefix}.dlq.>",
            ),
            subscribe=(_inbox(role),),
        )
    if role == "webhooks":
        return Permissions(
            publish=(
                *api,
                f"$JS.API.CONSUMER.INFO.{stream}.webhooks",
                f"$JS.API.CONSUMER.CREATE.{stream}.webhooks.>",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.webhooks",
                f"$JS.ACK.{stream}.webhooks.>",
            ),
            subscribe=(_inbox(role),),
        )
    if role == "sync":
        # Records through the write services like the API, and only as a command sender.
        return Permissions(
            publish=(f"{prefix}.cmd.*.people.record", f"{prefix}.cmd.*.interactions.record"),
            subscribe=(_inbox(role),),
        )
    raise ValueError(f"unknown NATS role {role!r}; expected one of {', '.join(ROLES)}")


def password_env_var(role: str) -> str:
    """Environment variable holding ``role``'s password for the deploy/ configurations."""
    return f"TIELINE_NATS_PASSWORD_{role.upper()}"


def _quote(value: str) -> str:
    """A double-quoted string for the NATS configuration format.

    The format accepts JSON string syntax, so ``json.dumps`` escapes quotes, backslashes and
    control characters. Quoted values are never expanded as ``$VARIABLE`` references.
    """
    return json.dumps(value)


def _allow_list(kind: str, subjects: tuple[str, ...]) -> list[str]:
    """``publish``/``subscribe`` section with one quoted subject per line."""
    return [
        f"        {kind} {{",
        "          allow: [",
        *(f"            {_quote(subject)}" for subject in subjects),
        "          ]",
        "        }",
    ]


def _render(prefix: str, stream: str, password_values: Mapping[str, str]) -> str:
    """The block, with each role's password written as the given configuration token."""
    lines = ["authorization {", "  users = ["]
    for role in ROLES:
        perms = permissions(role, prefix, stream)
        lines += [
            "    {",
            f"      user: {_quote(role)}",
            f"      password: {password_values[role]}",
            "      permissions {",
            *_allow_list("publish", perms.publish),
            *_allow_list("subscribe", perms.subscribe),
        ]
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def authorization_block(prefix: str, stream: str, passwords: dict[str, str]) -> str:
    """A nats-server ``authorization { users = [...] }`` block: one user per role in
    :data:`ROLES` with the password from ``passwords`` and :func:`permissions`.

    Passwords must not start with ``$2`` (nats-server would take them for bcrypt hashes).
    """
    for role in ROLES:
        password = passwords.get(role)
        if not password:
            raise ValueError(f"no password for NATS user {role!r}")
        if password.startswith("$2"):
            raise ValueError(f"the password of {role!r} looks like a bcrypt hash ($2...)")
    return _render(prefix, stream, {role: _quote(passwords[role]) for role in ROLES})


def deploy_authorization_block(prefix: str = "tl", stream: str = "TIELINE") -> str:
    """The block in ``deploy/nats/*.conf``: passwords are unquoted ``$TIELINE_NATS_PASSWORD_*``
    references, which nats-server reads from its environment (unset is a start-up error)."""
    return _render(prefix, stream, {role: f"${password_env_var(role)}" for role in ROLES})


def load_or_create_passwords(path: Path) -> dict[str, str]:
    """Return a password per role, generating (and storing) any that ``path`` does not hold.

    The file is JSON ``{role: password}`` with mode 0600 in a 0700 directory, written
    atomically. It is reused on later starts, so a second ``tieline up`` on the same data
    directory keeps the same credentials (operators may have copied the admin password).
    """
    passwords: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); fix or delete it") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in loaded.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of non-empty strings")
        passwords = dict(loaded)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
    missing = [role for role in ROLES if role not in passwords]
    if not missing:
        return passwords
    for role in missing:
        passwords[role] = new_password()
    make_dirs(path.parent)
    replace_file(path, (json.dumps(passwords, indent=2, sort_keys=True) + "\n").encode())
    return passwords
