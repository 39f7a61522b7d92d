"""Events for the benchmarks: in client form (what the HTTP API takes) and in log form (what the
write side publishes to the stream: the envelope filled, personal fields as ciphertext).

The realistic generator is ``tieline.services.tools.simulate`` when it exists; otherwise a
small seeded generator below produces the same shapes (people first, then meetings and follow-ups).
"""

from __future__ import annotations

import base64
import json
import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

_NS = uuid.UUID("0b5c1e7a-3d1f-4f8e-9a51-8c1b2d3e4f50")


def have_simulate() -> bool:
    try:
        import tieline.services.tools.simulate  # noqa: F401
    except ImportError:
        return False
    return True


def _fallback(people: int, events: int, seed: int) -> Iterator[dict[str, Any]]:
    """People first, then 70% meetings (1-3 extra participants sometimes), 25% follow-ups,
    5% help/closeness; a heavy-tailed choice of who interacts."""
    rng = random.Random(seed)
    width = len(str(people - 1))
    pid = [f"p{i:0{width}d}" for i in range(people)]
    t = datetime(2020, 1, 1, tzinfo=UTC)
    n = 0
    for p in pid:
        yield {
            "type": "person.added",
            "person_id": p,
            "display_name": f"Person {p}",
            "event_id": str(uuid.uuid5(_NS, f"{seed}:{n}")),
            "occurred_at": t.isoformat(),
        }
        n += 1
    weights = [1.0 / (i + 1) ** 0.8 for i in range(people)]
    step = timedelta(seconds=5 * 365 * 86400 / max(events - people, 1))
    while n < events:
        t += step
        a, b = rng.choices(pid, weights, k=2)
        if a == b:
            b = pid[(pid.index(a) + 1) % people]
        x = rng.random()
        base = {"event_id": str(uuid.uuid5(_NS, f"{seed}:{n}")), "occurred_at": t.isoformat()}
        if x < 0.7:
            parts = [a, b]
            if rng.random() < 0.1:
                parts += [q for q in rng.sample(pid, 2) if q not in parts]
            ev = {
                "type": "relationship.met",
                "participants": parts,
                "depth": rng.choice(("card_exchange", "brief_chat", "conversation")),
                "duration_minutes": rng.randint(1, 90),
                "initiated_by": a,
                "context": "bench meetup",
            }
        elif x < 0.95:
            ev = {
                "type": "relationship.followed_up",
                "from_person": a,
                "to_person": b,
                "channel": "email",
                "replied": rng.random() < 0.6,
            }
        elif x < 0.975:
            ev = {"type": "relationship.helped", "helper": a, "helped": b}
        else:
            ev = {
                "type": "relationship.closeness_rated",
                "rater": a,
                "ratee": b,
                "rating": rng.randint(1, 5),
            }
        yield {**base, **ev}
        n += 1


def client_events(people: int, events: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``events`` event objects in client form, the first ``people`` of them person.added."""
    if have_simulate():
        from tieline.services.tools.simulate import SimConfig, simulate

        return simulate(SimConfig(seed=seed, people=people, events=events))
    return _fallback(people, events, seed)


def split_people(
    events: Iterator[dict[str, Any]], people: int
) -> tuple[list[dict[str, Any]], Iterator[dict[str, Any]]]:
    """(the person.added events, the rest as an iterator)."""
    first = [next(events) for _ in range(people)]
    return first, events


# ---------------------------------------------------------------------------------------------
# Log form
# ---------------------------------------------------------------------------------------------

_PERSONAL: dict[str, tuple[str, ...]] | None = None
_PERSON_TYPES = ("person.added", "person.updated", "person.forgotten")


def personal_fields() -> dict[str, tuple[str, ...]]:
    """type -> its personal-data fields (from the schema's x-personal-data marks)."""
    global _PERSONAL
    if _PERSONAL is None:
        from tieline.events_schema.registry import REGISTRY
        from tieline.plumbing.crypto import fields_of

        _PERSONAL = {t: fields_of(cls) for t, cls in REGISTRY.classes.items()}
    return _PERSONAL


_POOL = base64.b64encode(os.urandom(1 << 16)).decode()


def fake_ciphertext(plaintext: str, salt: int = 0) -> str:
    """A value shaped like ``enc:v1:`` + base64(nonce + AES-GCM(plaintext) + tag): the same
    length as the real ciphertext, random-looking, but not decryptable (no keys involved)."""
    n = 12 + len(plaintext.encode()) + 16
    width = 4 * ((n + 2) // 3)
    start = (salt * 7919) % (len(_POOL) - width - 1)
    return "enc:v1:" + _POOL[start : start + width]


class LogEncoder:
    """Client-form events -> (subject, bytes, event_id) exactly as the write side would publish
    them (envelope filled; personal fields as ciphertext of the same length).

    Builds the JSON without pydantic for speed; ``validate_every`` decodes every n-th message
    with the registry (the only decode path) so an invalid shape fails the run loudly.
    """

    def __init__(
        self,
        workspace_id: str,
        prefix: str,
        *,
        recorded_by: str = "bench",
        validate_every: int = 997,
    ) -> None:
        self.ws = workspace_id
        self.prefix = prefix
        self.recorded_by = recorded_by
        self.validate_every = validate_every
        self.count = 0
        self.recorded_at = datetime.now(UTC).isoformat()
        self._personal = personal_fields()
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def subject(self, obj: dict[str, Any]) -> str:
        t = obj["type"]
        base = f"{self.prefix}.ev.{self.ws}.{t}"
        return f"{base}.{obj['person_id']}" if t in _PERSON_TYPES else base

    def encode(self, obj: dict[str, Any]) -> tuple[str, bytes, str]:
        t = obj["type"]
        data = dict(obj)
        data.setdefault("event_id", str(uuid.uuid4()))
        data.setdefault("occurred_at", self.recorded_at)
        data["schema_version"] = 1
        data["workspace_id"] = self.ws
        data["recorded_at"] = self.recorded_at
        data["recorded_by"] = self.recorded_by
        for f in self._personal.get(t, ()):
            v = data.get(f)
            if isinstance(v, str):
                data[f] = fake_ciphertext(v, self.count)
        raw = self._dumps(data).encode()
        if self.validate_every and self.count % self.validate_every == 0:
            from tieline.events_schema.registry import REGISTRY
            from tieline.plumbing.subjects import event_subject

            event = REGISTRY.decode(raw)
            if event_subject(self.prefix, event) != self.subject(data):
                raise AssertionError(f"subject mismatch for {t}")
        self.count += 1
        return self.subject(data), raw, data["event_id"]


def log_messages(
    people: int, events: int, ws: str, prefix: str, seed: int = 1
) -> Iterator[tuple[str, bytes, str]]:
    enc = LogEncoder(ws, prefix)
    for obj in client_events(people, events, seed):
        yield enc.encode(obj)


def meeting_events(people_ids: list[str], n: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """``n`` two-person meetings over existing people (client form), for the peer comparison."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(n):
        a, b = rng.sample(people_ids, 2)
        yield {
            "type": "relationship.met",
            "participants": [a, b],
            "depth": "conversation",
            "duration_minutes": rng.randint(5, 120),
            "occurred_at": (t0 + timedelta(minutes=i)).isoformat(),
            "event_id": str(uuid.uuid5(_NS, f"meet:{seed}:{i}")),
        }
