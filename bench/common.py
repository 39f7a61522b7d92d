"""What every benchmark shares: servers started the way the tests start them, isolated
settings, tokens, statistics, the machine description, CPU accounting per process, the rich
table and the JSON results file.

Pure helpers (``percentile``, ``summarize``, ``ratio``, ``growth_exponent``, ...) have no I/O and
are covered by ``tests/unit/test_bench_smoke.py``; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# ---------------------------------------------------------------------------------------------
# Pure statistics
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) with linear interpolation between closest ranks (the
    same definition as numpy's default). NaN for an empty sequence."""
    if not 0 <= p <= 100:
        raise ValueError("p must lie in 0..100")
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """Latency summary in milliseconds: n, mean, p50, p95, p99, max."""
    xs = sorted(latencies_s)
    if not xs:
        return {
            "n": 0,
            "mean_ms": math.nan,
            "p50_ms": math.nan,
            "p95_ms": math.nan,
            "p99_ms": math.nan,
            "max_ms": math.nan,
        }
    return {
        "n": len(xs),
        "mean_ms": 1000.0 * sum(xs) / len(xs),
        "p50_ms": 1000.0 * percentile(xs, 50),
        "p95_ms": 1000.0 * percentile(xs, 95),
        "p99_ms": 1000.0 * percentile(xs, 99),
        "max_ms": 1000.0 * xs[-1],
    }


def rate(count: int, seconds: float) -> float:
    """Events per second (0 when no time passed)."""
    return count / seconds if seconds > 0 else 0.0


def ratio(value: float | None, limit: float | None) -> float | None:
    """``value / limit``; None when either is missing or the limit is not positive."""
    if value is None or limit is None or limit <= 0 or math.isnan(value) or math.isnan(limit):
        return None
    return value / limit


def growth_exponent(sizes: Sequence[float], costs: Sequence[float]) -> float:
    """The exponent k of cost ~ size**k: least-squares slope of log(cost) on log(size).

    1.0 is linear, 0 constant, 2 quadratic. Needs two or more positive points.
    """
    pts = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs, strict=True) if s > 0 and c > 0]
    if len(pts) < 2:
        raise ValueError("need at least two positive (size, cost) points")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        raise ValueError("sizes must differ")
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


def growth_verdict(exponent: float, *, expected: float = 1.0, slack: float = 0.15) -> str:
    """``ok`` when the cost grows no faster than ``expected`` (+ ``slack`` for noise), else
    ``WORSE THAN LINEAR`` (or worse than the expectation given)."""
    if exponent <= expected + slack:
        return "ok"
    return "WORSE THAN LINEAR" if expected == 1.0 else f"worse than n^{expected:g}"


def fmt_num(x: float | int | None, digits: int = 3) -> str:
    """A compact human number: 12.3k, 1.25M, 0.512; '-' for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.{max(digits - 1, 0)}g}M" if ax < 1e7 else f"{x / 1e6:.1f}M"
    if ax >= 1e4:
        return f"{x / 1e3:.1f}k"
    if ax >= 1e3:
        return f"{x / 1e3:.2f}k"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{100 * r:.0f}%" if r < 10 else f"{r:.1f}x"


# ---------------------------------------------------------------------------------------------
# Result rows and targets
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured figure next to its same-run reference (raw limit or peer)."""

    metric: str
    value: float | None
    unit: str
    limit_name: str | None = None
    limit_value: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.limit_value)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class Target:
    """One target from the issue, judged on this run's figures."""

    name: str
    met: bool | None
    measured: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    name: str,
    value: float | None,
    threshold: float,
    *,
    at_least: bool,
    measured: str,
    reason_if_missed: str = "",
) -> Target:
    """A target met when ``value`` >= (``at_least``) or < ``threshold``; None when unmeasured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Target(name, None, "not measured", reason_if_missed)
    ok = value >= threshold if at_least else value < threshold
    return Target(name, ok, measured, "" if ok else reason_if_missed)


# ---------------------------------------------------------------------------------------------
# The machine and the noise around the run
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def nats_server_version() -> str:
    try:
        from tieline.services.runtime.embedded import nats_server_binary

        out = subprocess.run(
            [nats_server_binary(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() or out.stderr.strip()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def postgres_version(database_url: str | None = None) -> str:
    if database_url:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(database_url, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                if row:
                    return f"PostgreSQL {row[0]}"
    with contextlib.suppress(Exception):
        from tieline.services.runtime.embedded import postgres_bin_dir

        out = subprocess.run(
            [str(postgres_bin_dir() / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip()
    return "unknown"


def code_version() -> dict[str, Any]:
    """The commit measured, and the files that differed from it (other engineers edit the same
    working tree concurrently, so a run measures whatever was there when it started)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except Exception:
            return ""

    dirty = [
        ln[3:]
        for ln in git("status", "--porcelain").splitlines()
        if not ln[3:].startswith(
            ("bench/", "docs/performance.md", "tests/unit/test_bench_smoke.py")
        )
    ]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "subject": git("log", "-1", "--format=%s")[:100],
        "modified": dirty[:30],
    }


def machine_info(database_url: str | None = None) -> dict[str, Any]:
    mem = _mem_total_gib()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(mem, 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": nats_server_version(),
        "postgres": postgres_version(database_url),
    }


def other_activity() -> dict[str, Any]:
    """Load average and other heavy processes (e.g. other engineers' test runs) right now."""
    import psutil

    me = psutil.Process()
    mine = {me.pid} | {c.pid for c in me.children(recursive=True)}
    mine |= {p.pid for p in me.parents()}  # our ancestors (a timeout wrapper, the shell)
    busy = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] in mine or not cmd:
            continue
        if any(k in cmd for k in ("pytest", "py.test", "bench", "mypy", "pip ")):
            busy.append(cmd[:120])
    return {"loadavg": list(os.getloadavg()), "other_processes": busy[:20]}


# ---------------------------------------------------------------------------------------------
# CPU accounting per process tree (where did the CPU go during a phase?)
# ---------------------------------------------------------------------------------------------


def _proc_stat_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, cpu seconds used so far: user + system, plus the time of children it has
    reaped, so a PostgreSQL backend that exits is still counted)."""
    import psutil

    table = {}
    for proc in psutil.process_iter(["ppid", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:  # gone, or not ours to read
            continue
        cpu = times.user + times.system + times.children_user + times.children_system
        table[proc.pid] = (proc.info["ppid"], cpu)
    return table


def _descendants_of(pid: int, table: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """Every pid below ``pid`` in ``table`` (a snapshot, so the tree and its CPU times agree)."""
    table = table if table is not None else _proc_stat_table()
    kids: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        kids.setdefault(pp, []).append(p)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


class CpuMeter:
    """CPU seconds used by named process trees between :meth:`start` and :meth:`stop`.

    A descendant that exited is counted through its parent's reaped-children time.
    """

    def __init__(self, roots: dict[str, int | None], solo: Iterable[str] = ()) -> None:
        self.roots = {k: v for k, v in roots.items() if v}
        #: Names counted without their descendants (e.g. this process, parent of the stack).
        self.solo = set(solo)
        self._t0: dict[str, dict[int, float]] = {}
        self.wall = 0.0
        self._w0 = 0.0

    def _snapshot(self) -> dict[str, dict[int, float]]:
        table = _proc_stat_table()
        snap = {}
        for name, pid in self.roots.items():
            if name in self.solo:
                t = os.times() if pid == os.getpid() else None
                snap[name] = {pid: t.user + t.system} if t else {}
                continue
            pids = _descendants_of(pid, table) | {pid}
            snap[name] = {p: table[p][1] for p in pids if p in table}
        return snap

    def start(self) -> None:
        self._t0 = self._snapshot()
        self._w0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        """CPU seconds per tree (plus ``wall``)."""
        snap = self._snapshot()
        self.wall = time.perf_counter() - self._w0
        out: dict[str, float] = {}
        for name, now in snap.items():
            before = self._t0.get(name, {})
            out[name] = round(sum(v - before.get(p, 0.0) for p, v in now.items()), 3)
        out["wall"] = round(self.wall, 3)
        return out


def postgres_pid(database_url: str) -> int | None:
    """PID of the postmaster serving ``database_url`` when it runs on this machine."""
    import psycopg

    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
            ).fetchone()
        if row is None:
            return None
        import psutil

        return int(psutil.Process(row[0]).ppid())  # the checkpointer's parent
    except Exception:
        return None


def self_cpu() -> float:
    """CPU seconds used by this process so far."""
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------------------------------------
# Servers, settings, stacks, tokens
# ---------------------------------------------------------------------------------------------


def quiet_logging() -> None:
    """The bench's own process logs warnings only (the services keep their defaults); SIGTERM
    unwinds like Ctrl-C so the servers and processes a benchmark started are stopped."""
    import signal

    from tieline.plumbing.logging import configure_logging

    configure_logging("WARNING", json=False)

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


@dataclass(frozen=True)
class ServerUrls:
    nats_url: str
    database_url: str
    source: str
    sync_always: bool | None


def bench_env_urls() -> tuple[str | None, str | None]:
    return os.environ.get("TIELINE_BENCH_NATS_URL"), os.environ.get("TIELINE_BENCH_DATABASE_URL")


@contextlib.contextmanager
def temp_root(prefix: str = "tieline-bench-") -> Iterator[Path]:
    """A temporary directory for servers' data, removed afterwards (``TIELINE_BENCH_KEEP=1``
    keeps it for inspection)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("TIELINE_BENCH_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def postgres(root: Path) -> Iterator[str]:
    """PostgreSQL URL: ``TIELINE_BENCH_DATABASE_URL`` or an embedded server under ``root``."""
    _, db_url = bench_env_urls()
    if db_url:
        yield db_url
        return
    from tieline.services.runtime.embedded import EmbeddedPostgres

    with EmbeddedPostgres(root / "pg") as pg:
        yield pg.url


@contextlib.contextmanager
def nats_server(
    root: Path, *, sync_always: bool = True, name: str = "nats"
) -> Iterator[ServerUrls]:
    """A JetStream server without authentication: ``TIELINE_BENCH_NATS_URL`` or an embedded
    one under ``root/name`` (fsync before ack when ``sync_always``)."""
    nats_url, _ = bench_env_urls()
    if nats_url:
        yield ServerUrls(nats_url, "", "environment", None)
        return
    from tieline.services.runtime.embedded import EmbeddedNats

    with EmbeddedNats(root / name, sync_always=sync_always) as n:
        yield ServerUrls(n.url, "", "embedded", sync_always)


class RestartableNats:
    """An embedded nats-server whose data dir survives restarts with another fsync mode:
    fill the stream fast in lazy mode, then measure in the product's default mode."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: Any = None
        self.external, _ = bench_env_urls()

    def start(self, sync_always: bool) -> str:
        if self.external:
            return self.external
        from tieline.services.runtime.embedded import EmbeddedNats

        self.stop()
        self.server = EmbeddedNats(self.data_dir, sync_always=sync_always)
        self.server.start()
        return str(self.server.url)

    @property
    def pid(self) -> int | None:
        return None if self.server is None else self.server.pid

    @property
    def mode(self) -> str:
        if self.external:
            return "external"
        return "sync_always" if self.server and self.server.sync_always else "lazy"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def unique_settings(nats_url: str, database_url: str, **overrides: Any) -> Any:
    """Settings isolated from everything else on the servers (own stream, subjects, consumer,
    schema), like tests/conftest.py's."""
    from tieline.plumbing.config import Settings

    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "database_url": database_url,
        "database_schema": f"b_{tag}",
        "stream_name": f"B_{tag}",
        "subject_prefix": f"b{tag}",
        "consumer_name": "projections",
    }
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Any) -> dict[str, str]:
    """The TIELINE_* environment that makes child processes use ``settings``."""
    from tieline.plumbing.config import DEPLOYMENT_NAMES

    return settings.env(*DEPLOYMENT_NAMES)


@dataclass
class RunningStack:
    stack: Any
    settings: Any  # what the services use (no NATS user)
    admin: Any  # same, as the NATS admin user (raw publishing on the same server)
    mode: str

    @property
    def api_url(self) -> str:
        return str(self.stack.api_url)

    def pids(self) -> dict[str, int | None]:
        s = self.stack
        out: dict[str, int | None] = {role: p.pid for role, p in s.children.items()}
        out["nats"] = s.nats.pid if s.nats is not None else None
        out["postgres"] = s.postgres.pid if s.postgres is not None else None
        return out


@contextlib.contextmanager
def running_stack(
    root: Path,
    database_url: str,
    *,
    sync_always: bool = True,
    roles: tuple[str, ...] | None = None,
    env: dict[str, str] | None = None,
    api_workers: int = 1,
) -> Iterator[RunningStack]:
    """The whole of tieline as ``tieline up`` runs it (separate processes; an embedded NATS
    with per-process users unless ``TIELINE_BENCH_NATS_URL`` is set), on ``database_url``;
    ``api_workers`` api processes on the one api port (``tieline up --api-workers``)."""
    from tieline.services.runtime.supervisor import Stack, StackConfig

    nats_url, _ = bench_env_urls()
    base = unique_settings(nats_url or "nats://unused", database_url)
    cfg_env = {**settings_env(base), **(env or {})}
    kwargs: dict[str, Any] = {}
    if roles is not None:
        kwargs["roles"] = roles
    config = StackConfig(
        data_dir=root,
        nats_url=nats_url,
        database_url=database_url,
        sync_always=sync_always,
        env=cfg_env,
        api_workers=api_workers,
        **kwargs,
    )
    with Stack(config) as stack:
        creds = stack.nats_credentials("admin")
        settings = base.model_copy(update={"nats_url": stack.nats_url})
        admin = settings.model_copy(
            update={
                "nats_user": creds[0] if creds else None,
                "nats_password": creds[1] if creds else None,
            }
        )
        mode = "external" if nats_url else ("sync_always" if sync_always else "lazy")
        yield RunningStack(stack, settings, admin, mode)


def make_token(settings: Any, ws: str, role: str = "write", name: str = "bench") -> str:
    """An API token straight in the database (what ``tieline token create`` does)."""
    from tieline.services.auth import issue_token

    return str(run_async(issue_token(settings, ws, role, name)))


def run_async(coro: Any) -> Any:
    """asyncio.run that also works when called from inside a running loop (in a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def nats_connect(settings: Any, name: str = "tieline-bench") -> Any:
    import nats

    kwargs: dict[str, Any] = {}
    if settings.nats_user:
        kwargs = {"user": settings.nats_user, "password": settings.nats_password or ""}
    return await nats.connect(
        settings.nats_url, name=name, connect_timeout=5, max_reconnect_attempts=3, **kwargs
    )


# ---------------------------------------------------------------------------------------------
# Output: rich table and JSON
# ---------------------------------------------------------------------------------------------


def print_table(title: str, rows: Iterable[Row], targets: Iterable[Target] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    table = Table(title=title, show_lines=False)
    for col, kw in (
        ("metric", {}),
        ("value", {"justify": "right"}),
        ("unit", {}),
        ("same-run reference", {}),
        ("ref value", {"justify": "right"}),
        ("ratio", {"justify": "right"}),
        ("note", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    from rich.markup import escape

    for r in rows:
        table.add_row(
            escape(r.metric),
            fmt_num(r.value),
            r.unit,
            escape(r.limit_name or "-"),
            fmt_num(r.limit_value),
            fmt_ratio(r.ratio),
            escape(r.note),
        )
    console.print(table)
    targets = list(targets)
    if targets:
        t = Table(title=f"{title}: targets")
        console = Console(width=max(Console().width, 150))
        for col in ("target", "verdict", "measured", "reason for a miss"):
            t.add_column(col, overflow="fold")
        for tg in targets:
            verdict = (
                ("[green]met[/]" if tg.met else "[red]missed[/]")
                if tg.met is not None
                else "[yellow]not measured[/]"
            )
            t.add_row(escape(tg.name), verdict, escape(tg.measured), escape(tg.reason))
        console.print(t)


def write_results(
    name: str,
    *,
    args: dict[str, Any],
    rows: Sequence[Row],
    targets: Sequence[Target] = (),
    extra: dict[str, Any] | None = None,
    database_url: str | None = None,
    started: float | None = None,
    activity_before: dict[str, Any] | None = None,
) -> Path:
    """Write ``bench/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": name,
        "finished_at": datetime.now(UTC).isoformat(),
        "duration_s": round(time.time() - started, 1) if started else None,
        "argv": sys.argv,
        "args": args,
        "machine": machine_info(database_url),
        "code": code_version(),
        "activity_before": activity_before,
        "activity_after": other_activity(),
        "rows": [r.as_dict() for r in rows],
        "targets": [t.as_dict() for t in targets],
        "extra": extra or {},
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def finish_run(
    name: str,
    title: str,
    args: Any,
    rows: Sequence[Row],
    targets: Sequence[Target],
    *,
    extra: dict[str, Any] | None,
    started: float,
    before: dict[str, Any],
    database_url: str | None = None,
) -> dict[str, Any]:
    """The end of every benchmark: write its results file, print its table and where the file
    is; return the rows and targets (``python -m bench all`` collects them)."""
    path = write_results(
        name,
        args=jsonable_args(args),
        rows=rows,
        targets=targets,
        extra=extra,
        database_url=database_url,
        started=started,
        activity_before=before,
    )
    print_table(title, rows, targets)
    print(f"results: {path}")
    return {"rows": rows, "targets": targets}


def jsonable_args(ns: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if not callable(v)}


# ---------------------------------------------------------------------------------------------
# Profiling with py-spy (optional: ``pip install py-spy``)
# ---------------------------------------------------------------------------------------------


def start_py_spy(
    pid: int, seconds: float, out: Path, *, rate_hz: int = 200, subprocesses: bool = False
) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` for ``seconds`` into ``out`` (collapsed stacks); None without py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(int(seconds), 1)),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    if subprocesses:
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a recording early; py-spy writes its output on SIGINT."""
    import signal

    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def collapsed_top(path: Path, top: int = 25) -> list[dict[str, Any]]:
    """From py-spy's collapsed stacks: the frames with the most inclusive samples (and their
    self samples), as shares of all samples."""
    if not path.exists():
        return []
    import re

    strip = re.compile(r":\d+\)$")
    total = 0
    incl: dict[str, int] = {}
    selfc: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [strip.sub(")", f) for f in stack.split(";")]
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
        selfc[frames[-1]] = selfc.get(frames[-1], 0) + c
    if not total:
        return []
    rows = sorted(incl.items(), key=lambda kv: -kv[1])
    out = []
    for frame, c in rows:
        if frame.startswith(
            (
                "<module>",
                "run (asyncio",
                "_run_once",
                "run_forever",
                "_run (",
                "run_until_complete",
                "main (",
                "run (uvicorn",
                "serve (",
            )
        ):
            continue
        out.append(
            {
                "frame": frame,
                "inclusive": round(c / total, 3),
                "self": round(selfc.get(frame, 0) / total, 3),
            }
        )
        if len(out) >= top:
            break
    return out


def collapsed_self_top(path: Path, top: int = 15) -> list[dict[str, Any]]:
    """The frames with the most self samples (where the CPU actually is)."""
    if not path.exists():
        return []
    total = 0
    selfc: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.split(";")[-1]
        selfc[leaf] = selfc.get(leaf, 0) + int(count)
    return (
        [
            {"frame": f, "self": round(c / total, 3)}
            for f, c in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]
        ]
        if total
        else []
    )


def cli_main(
    name: str,
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
    argv: list[str] | None = None,
) -> None:
    """The command line of one benchmark: ``python -m bench NAME [options]``."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_args(p)
    run(p.parse_args(argv))
