"""The raw limits on the NATS side, with plain nats-py: publish one at a time, publish with
many in flight (``publish_async``), the same from several processes, and pull consumers.

Every raw publish carries ``Nats-Msg-Id`` (the server's dedupe work is part of the product's
path too) and the expected-stream header, on a stream configured like tieline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js import api as js_api

from bench.common import nats_connect, rate, summarize


@dataclass
class PubResult:
    count: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    last_seq: int = 0

    @property
    def per_s(self) -> float:
        return rate(self.count, self.seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.per_s, 1),
            **summarize(self.latencies),
        }


def raw_stream_config(name: str, subjects: list[str]) -> js_api.StreamConfig:
    """Like services.infra.jetstream.stream_config: file storage, limits, a dedupe window."""
    return js_api.StreamConfig(
        name=name,
        subjects=subjects,
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=0,
        max_msgs=-1,
        max_bytes=-1,
        max_msg_size=1024 * 1024,
        discard=js_api.DiscardPolicy.OLD,
        num_replicas=1,
        duplicate_window=120.0,
        allow_direct=True,
    )


async def ensure_raw_stream(js: Any, name: str, subjects: list[str]) -> None:
    with contextlib.suppress(Exception):
        await js.delete_stream(name)
    await js.add_stream(config=raw_stream_config(name, subjects))


async def publish_one_at_a_time(
    js: Any, stream: str, msgs: Iterable[tuple[str, bytes, str]]
) -> PubResult:
    lat = []
    n = 0
    seq = 0
    t0 = time.perf_counter()
    for subject, data, msg_id in msgs:
        s = time.perf_counter()
        ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, stream=stream)
        lat.append(time.perf_counter() - s)
        seq = ack.seq
        n += 1
    return PubResult(n, time.perf_counter() - t0, lat, seq)


async def publish_many_in_flight(
    js: Any, stream: str, msgs: Iterable[tuple[str, bytes, str]], *, record_latency: bool = True
) -> PubResult:
    """``publish_async`` with up to the context's ``publish_async_max_pending`` (4000) in
    flight; latency is send -> PubAck (queueing included: this is the saturation point)."""
    lat: list[float] = []
    futures = []
    t0 = time.perf_counter()
    n = 0
    last = 0
    for subject, data, msg_id in msgs:
        s = time.perf_counter()
        fut = await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}, stream=stream)
        if record_latency:
            fut.add_done_callback(lambda _f, s=s: lat.append(time.perf_counter() - s))
        futures.append(fut)
        n += 1
        if len(futures) >= 20_000:  # keep memory bounded on long runs
            last = max(last, await _settle(futures))
            futures.clear()
    last = max(last, await _settle(futures))
    return PubResult(n, time.perf_counter() - t0, lat, last)


async def _settle(futures: Sequence[asyncio.Future[Any]]) -> int:
    last = 0
    for f in futures:
        ack = await f
        last = max(last, int(ack.seq))
    return last


# -- several publisher processes --------------------------------------------------------------


def _child(
    settings_json: str,
    stream: str,
    prefix: str,
    payloads: list[bytes],
    n: int,
    idx: int,
    go: Any,
    out: Any,
) -> None:
    from tieline.plumbing.config import Settings

    settings = Settings.model_validate_json(settings_json)

    async def main() -> tuple[int, float, float]:
        nc = await nats_connect(settings, f"bench-pub-{idx}")
        js = nc.jetstream(publish_async_max_pending=4000)
        msgs = (
            (f"{prefix}.p{idx}", payloads[i % len(payloads)], f"{idx}-{i}-{time.time_ns()}")
            for i in range(n)
        )
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        t0 = time.time()
        res = await publish_many_in_flight(js, stream, msgs, record_latency=False)
        t1 = time.time()
        await nc.close()
        return res.count, t0, t1

    out.put(asyncio.run(main()))


def publish_from_processes(
    settings: Any, stream: str, prefix: str, payloads: list[bytes], total: int, procs: int
) -> PubResult:
    """``procs`` processes each publishing ``total/procs`` messages with many in flight, all
    started together; rate = all messages / (last finish - first start)."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    per = total // procs
    children = [
        ctx.Process(
            target=_child,
            args=(settings.model_dump_json(), stream, prefix, payloads, per, i, go, out),
        )
        for i in range(procs)
    ]
    for c in children:
        c.start()
    time.sleep(1.5)  # let them import and connect
    go.set()
    results = [out.get(timeout=600) for _ in children]
    for c in children:
        c.join(timeout=30)
    count = sum(r[0] for r in results)
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    return PubResult(count, end - start)


# -- consumers ------------------------------------------------------------------------------


async def pull_drain(
    js: Any,
    stream: str,
    subject: str,
    n: int,
    *,
    batch: int = 500,
    ack: str = "all",
    durable: str | None = None,
) -> tuple[int, float]:
    """Fetch ``n`` messages in batches with a pull consumer; ``ack``: ``all`` (ack the last of
    each batch, AckPolicy.ALL, like the worker), ``each`` (ack every message, explicit) or
    ``none`` (AckPolicy.NONE). Returns (messages, seconds)."""
    policy = {
        "all": js_api.AckPolicy.ALL,
        "each": js_api.AckPolicy.EXPLICIT,
        "none": js_api.AckPolicy.NONE,
    }[ack]
    durable = durable or f"raw-{ack}-{time.time_ns()}"
    sub = await js.pull_subscribe(
        subject,
        durable=durable,
        stream=stream,
        config=js_api.ConsumerConfig(
            ack_policy=policy,
            deliver_policy=js_api.DeliverPolicy.ALL,
            max_ack_pending=max(batch * 4, 1000),
            ack_wait=60,
        ),
    )
    got = 0
    t0 = time.perf_counter()
    idle = 0
    while got < n:
        try:
            msgs = await sub.fetch(min(batch, n - got), timeout=1.0)
        except (TimeoutError, Exception) as exc:
            if "timeout" not in type(exc).__name__.lower():
                raise
            idle += 1
            if idle > 5:
                break
            continue
        idle = 0
        got += len(msgs)
        if ack == "all":
            await msgs[-1].ack()
        elif ack == "each":
            for m in msgs:
                await m.ack()
    secs = time.perf_counter() - t0
    await sub.unsubscribe()
    with contextlib.suppress(Exception):
        await js.delete_consumer(stream, durable)
    return got, secs


async def ordered_read(nc: Any, js: Any, subject: str, n: int) -> tuple[int, float]:
    """An ordered push consumer (no acks, flow control): the fastest way nats-py reads a
    stream from the start."""
    done = asyncio.Event()
    got = 0
    t0 = time.perf_counter()

    async def cb(_msg: Any) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sub = await js.subscribe(
        subject,
        ordered_consumer=True,
        cb=cb,
        deliver_policy=js_api.DeliverPolicy.ALL,
        pending_msgs_limit=1_000_000,
        pending_bytes_limit=1 << 30,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 2000))
    secs = time.perf_counter() - t0
    await sub.unsubscribe()
    return got, secs


async def fill_stream(settings: Any, msgs: Iterable[tuple[str, bytes, str]]) -> PubResult:
    """Publish ``msgs`` to the settings' stream as fast as possible (setup, not measured)."""
    from tieline.plumbing.jetstream import ensure_streams

    nc = await nats_connect(settings, "bench-fill")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await ensure_streams(js, settings)
        return await publish_many_in_flight(js, settings.stream_name, msgs, record_latency=False)
    finally:
        await nc.close()
