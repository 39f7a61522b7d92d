"""A seeded, realistic synthetic relationship network, as the events a client would send.

``simulate(SimConfig(seed=1, people=1000, events=100_000))`` yields event objects in the form
the batch endpoint accepts (``type``, the event's fields, a deterministic ``event_id`` and
``occurred_at``; no workspace, so the same file can be imported anywhere), lazily: memory is
bounded by the number of people and of currently active ties, never by the number of events.

What happens in the simulated years:

- every person is added first (``person.added``), with a name, often an e-mail, an
  organisation and a title; people belong to communities (a field, a city) and some are far
  more sociable than others (a heavy-tailed activity weight);
- conferences (large, mixed) and meetups (small, mostly one community) where many people meet,
  mostly ``card_exchange`` and ``brief_chat``, sometimes a real conversation, now and then in
  a small group;
- follow-ups some days after some meetings, more likely after deeper ones; most are answered;
- some pairs become friends: a tie that then produces repeated conversations, meals and
  activities, video calls, answered follow-ups, help, closeness ratings and introductions to
  other friends (the introduced pair often meets soon after);
- ties fade: each has a lifetime (some only months) and is seen less and less often before it
  stops altogether;
- a few people "sell and disappear": they follow up with everyone they meet, once or twice,
  always initiating, never answered, and never become anyone's friend.

The stream is exactly ``events`` long (people first, then interactions spread over
``years`` from ``start``, roughly in time order) and every ``occurred_at`` lies before the end
of the simulated period. The same configuration always yields the same lines: event ids are
``uuid5(namespace(seed), counter)``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import IO, Any

from tieline.services.tools.sim_names import CITIES, DOMAINS, FIRST, LAST, ORGS, TITLES, TOPICS

#: Namespace of simulated event ids: ids are uuid5(uuid5(SIM_NAMESPACE, "seed:N"), counter).
SIM_NAMESPACE = uuid.UUID("6f1d3c2a-8a7e-5b0c-9d7e-2f4c1a9b7e31")
DEFAULT_START = datetime(2020, 1, 1, tzinfo=UTC)
DEFAULT_YEARS = 5.0
DAY = 86400.0

DEPTHS = ("card_exchange", "brief_chat", "conversation", "deep_conversation", "meal_or_activity")
#: Minutes a meeting of each depth lasts (low, high).
DURATIONS = ((1, 3), (3, 15), (15, 60), (40, 150), (60, 180))
#: After a gathering meeting of each depth: chance of a follow-up, and of becoming friends.
FOLLOW_UP_P = (0.10, 0.22, 0.45, 0.60, 0.50)
FRIEND_P = (0.004, 0.015, 0.08, 0.20, 0.25)
#: Mean days between two interactions of a tie of weight 1 (a weaker tie: longer), which
#: grows up to five-fold as the tie ages towards its end (it fades, then stops).
TIE_GAP_DAYS = 21.0
SELLER_SHARE = 0.03
MAX_TIES = 200_000

FOLLOW_UP_CHANNELS = ("email", "email", "email", "message", "message", "social", "phone")
FRIEND_CHANNELS = ("message", "message", "phone", "video", "email", "in_person")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``events`` counts every line, the ``people`` additions included."""

    seed: int = 1
    people: int = 1000
    events: int = 100_000
    start: datetime = DEFAULT_START
    years: float = DEFAULT_YEARS

    @property
    def end(self) -> datetime:
        """The end of the simulated period: no event occurs at or after it."""
        return self.start + timedelta(days=365.25 * self.years)

    def check(self) -> None:
        """Raise ValueError when the configuration cannot be simulated."""
        if self.people < 2:
            raise ValueError("people: at least 2 people are needed to meet")
        if self.people > 10_000_000:
            raise ValueError("people: at most 10,000,000")
        if self.events < self.people:
            raise ValueError(
                f"events: at least as many events as people ({self.people}): every person "
                "is added first"
            )
        if not 0 < self.years <= 200:
            raise ValueError("years: must be more than 0 and at most 200")
        if self.start.tzinfo is None:
            raise ValueError("start: must carry a timezone (e.g. 2020-01-01T00:00:00Z)")
        if self.start.year < 1900:
            raise ValueError("start: tieline refuses events before 1900")


def event_namespace(seed: int) -> uuid.UUID:
    """The uuid5 namespace of a seed's event ids."""
    return uuid.uuid5(SIM_NAMESPACE, f"seed:{seed}")


class _Simulation:
    """The state of one run: people, active ties and scheduled follow-ups."""

    def __init__(self, cfg: SimConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.n = cfg.people
        t0 = cfg.start.timestamp()
        self.t_end = cfg.end.timestamp() - 1.0
        span = self.t_end - t0
        # People are added in the first minutes; interactions start a day later.
        self.act_start = t0 + min(DAY, span * 0.01)
        self.add_span = min(3600.0, (self.act_start - t0) * 0.5)
        self.act_span = self.t_end - self.act_start
        self._id_base = hashlib.sha1(event_namespace(cfg.seed).bytes)
        self.counter = 0
        self._days: dict[int, str] = {}
        width = len(str(self.n - 1))
        self.pid = [f"p{i:0{width}d}" for i in range(self.n)]
        self.heap: list[tuple[float, int, int, int, int, int]] = []
        self._heap_seq = 0
        # Active ties by pair key: [a, b, born, expires, weight].
        self.tie_of: dict[int, list[Any]] = {}
        self.friends: dict[int, list[int]] = {}
        self._make_population()

    # -- ids and times --------------------------------------------------------------------

    def _next_id(self) -> str:
        h = self._id_base.copy()
        h.update(b"%d" % self.counter)
        self.counter += 1
        x = h.hexdigest()
        return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{'89ab'[int(x[16], 16) & 3]}{x[17:20]}-{x[20:32]}"

    def _ts(self, t: float) -> str:
        t = min(t, self.t_end)
        s = int(t)
        d, r = divmod(s, 86400)
        day = self._days.get(d)
        if day is None:
            day = datetime.fromtimestamp(d * 86400, UTC).strftime("%Y-%m-%d")
            if len(self._days) > 100_000:
                self._days.clear()
            self._days[d] = day
        return f"{day}T{r // 3600:02d}:{r % 3600 // 60:02d}:{r % 60:02d}Z"

    # -- people ---------------------------------------------------------------------------

    def _make_population(self) -> None:
        rng, n = self.rng, self.n
        self.n_comm = max(1, round(n / 60))
        self.comm = [rng.randrange(self.n_comm) for _ in range(n)]
        weight = [min(rng.paretovariate(1.8), 40.0) for _ in range(n)]
        self.seller = [rng.random() < SELLER_SHARE for _ in range(n)]
        members: list[list[int]] = [[] for _ in range(self.n_comm)]
        for i, c in enumerate(self.comm):
            members[c].append(i)
        for c in range(self.n_comm):  # no empty community: borrow someone
            if not members[c]:
                members[c].append(rng.randrange(n))
        self.members = members
        self.member_cum = [list(accumulate(weight[i] for i in m)) for m in members]
        self.all_cum = list(accumulate(weight))

    def _pick_in(self, c: int) -> int:
        cum = self.member_cum[c]
        return self.members[c][bisect_right(cum, self.rng.random() * cum[-1], hi=len(cum) - 1)]

    def _pick_any(self) -> int:
        cum = self.all_cum
        return bisect_right(cum, self.rng.random() * cum[-1], hi=len(cum) - 1)

    def _people(self) -> Iterator[dict[str, Any]]:
        rng = self.rng
        t0 = self.cfg.start.timestamp()
        step = self.add_span / self.n
        for i in range(self.n):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            c = self.comm[i]
            ev: dict[str, Any] = {
                "event_id": self._next_id(),
                "type": "person.added",
                "occurred_at": self._ts(t0 + i * step),
                "person_id": self.pid[i],
                "display_name": f"{first} {last}",
            }
            if rng.random() < 0.7:
                ev["email"] = f"{first.lower()}.{last.lower()}{i}@{DOMAINS[i % len(DOMAINS)]}"
            if rng.random() < 0.85:
                ev["organization"] = ORGS[(c * 3 + rng.randrange(4)) % len(ORGS)]
            if rng.random() < 0.7:
                ev["title"] = "Sales Director" if self.seller[i] else rng.choice(TITLES)
            if rng.random() < 0.05:
                ev["notes"] = f"Active in the {TOPICS[c % len(TOPICS)]} community"
            yield ev

    # -- ties -----------------------------------------------------------------------------

    def _key(self, a: int, b: int) -> int:
        return a * self.n + b if a < b else b * self.n + a

    def _form_tie(self, a: int, b: int, t: float) -> None:
        if len(self.tie_of) >= MAX_TIES or self.seller[a] or self.seller[b]:
            return
        key = self._key(a, b)
        if key in self.tie_of:
            return
        rng = self.rng
        if rng.random() < 0.25:  # a tie that fades within months
            life = rng.uniform(60, 240) * DAY
        else:
            life = max(120 * DAY, rng.expovariate(1 / (900 * DAY)))
        tie = [a, b, t, t + life, rng.uniform(0.35, 1.0)]
        self.tie_of[key] = tie
        self.friends.setdefault(a, []).append(b)
        self.friends.setdefault(b, []).append(a)
        self._schedule_tie(tie, t)

    def _schedule_tie(self, tie: list[Any], t: float) -> None:
        """The tie's next interaction, later and later as it ages (it fades)."""
        age = (t - tie[2]) / (tie[3] - tie[2])
        mean = TIE_GAP_DAYS * DAY / (tie[4] * (1.0 - 0.8 * min(age, 1.0)))
        due = t + self.rng.expovariate(1.0 / mean)
        if due >= tie[3] or due >= self.t_end:
            self._drop_tie(tie)
            return
        self._schedule(due, self.TIE, tie[0], tie[1])

    def _drop_tie(self, tie: list[Any]) -> None:
        """The tie faded out; the pair stops meeting."""
        a, b = tie[0], tie[1]
        self.tie_of.pop(self._key(a, b), None)
        for x, y in ((a, b), (b, a)):
            fl = self.friends.get(x)
            if fl is not None:
                if y in fl:
                    fl.remove(y)
                if not fl:
                    del self.friends[x]

    # -- scheduled events -----------------------------------------------------------------

    FOLLOW_UP, FOLLOW_UP_REPLIED, MEET, TIE = 0, 1, 2, 3

    def _schedule(self, due: float, kind: int, a: int, b: int, extra: int = 0) -> None:
        if due >= self.t_end:
            return
        self._heap_seq += 1
        heapq.heappush(self.heap, (due, self._heap_seq, kind, a, b, extra))

    def _scheduled(self, item: tuple[float, int, int, int, int, int]) -> dict[str, Any] | None:
        due, _, kind, a, b, extra = item
        if kind == self.TIE:
            tie = self.tie_of.get(self._key(a, b))
            if tie is None:
                return None
            ev = self._tie_event(due, tie)
            self._schedule_tie(tie, due)
            return ev
        if kind == self.MEET:  # an introduced pair meets
            d = 2 if self.rng.random() < 0.7 else 4
            ev = self._met(due, [a, b], d, initiated_by=a)
            self._after_meeting(a, b, d, due, allow_follow_up=False)
            return ev
        return self._follow_up(
            due,
            a,
            b,
            kind == self.FOLLOW_UP_REPLIED,
            FOLLOW_UP_CHANNELS[extra % len(FOLLOW_UP_CHANNELS)],
        )

    # -- event builders -------------------------------------------------------------------

    def _met(
        self,
        t: float,
        people: list[int],
        depth: int,
        *,
        initiated_by: int | None = None,
        context: str | None = None,
        where: str | None = None,
        remote: bool = False,
    ) -> dict[str, Any]:
        lo, hi = DURATIONS[depth]
        ev: dict[str, Any] = {
            "event_id": self._next_id(),
            "type": "relationship.met",
            "occurred_at": self._ts(t),
            "participants": [self.pid[p] for p in people],
            "depth": DEPTHS[depth],
            "duration_minutes": self.rng.randint(lo, hi),
        }
        if remote:
            ev["mode"] = "remote"
        if initiated_by is not None:
            ev["initiated_by"] = self.pid[initiated_by]
        if where is not None:
            ev["where"] = where
        if context is not None:
            ev["context"] = context
        return ev

    def _follow_up(
        self, t: float, a: int, b: int, replied: bool, channel: str, note: str | None = None
    ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_id": self._next_id(),
            "type": "relationship.followed_up",
            "occurred_at": self._ts(t),
            "from_person": self.pid[a],
            "to_person": self.pid[b],
            "channel": channel,
            "replied": replied,
        }
        if note is not None:
            ev["note"] = note
        return ev

    def _after_meeting(
        self, a: int, b: int, depth: int, t: float, allow_follow_up: bool = True
    ) -> None:
        rng = self.rng
        sa, sb = self.seller[a], self.seller[b]
        if sa or sb:  # sell and disappear: one or two unanswered follow-ups, never a tie
            s, o = (a, b) if sa else (b, a)
            if sa and sb:
                return
            if rng.random() < 0.9:
                self._schedule(t + rng.uniform(0.5, 4) * DAY, self.FOLLOW_UP, s, o, 0)
                if rng.random() < 0.5:
                    self._schedule(t + rng.uniform(8, 20) * DAY, self.FOLLOW_UP, s, o, 1)
            return
        if allow_follow_up and rng.random() < FOLLOW_UP_P[depth]:
            x, y = (a, b) if rng.random() < 0.5 else (b, a)
            kind = self.FOLLOW_UP_REPLIED if rng.random() < 0.65 else self.FOLLOW_UP
            self._schedule(t + rng.uniform(0.5, 10) * DAY, kind, x, y, rng.randrange(64))
        if rng.random() < FRIEND_P[depth]:
            self._form_tie(a, b, t)

    # -- episodes -------------------------------------------------------------------------

    def _gathering(self, now: float, limit: int) -> Iterator[dict[str, Any]]:
        """A conference or a meetup: many meetings on one day, mostly light."""
        rng, n = self.rng, self.n
        conference = rng.random() < 0.2
        c = rng.randrange(self.n_comm)
        if conference:
            k, local = min(n, rng.randint(40, 250)), 0.3
        else:
            k, local = min(n, rng.randint(6, 35)), 0.8
        seen: set[int] = set()
        att: list[int] = []
        for _ in range(4 * k):
            p = self._pick_in(c) if rng.random() < local else self._pick_any()
            if p not in seen:
                seen.add(p)
                att.append(p)
                if len(att) >= k:
                    break
        if len(att) < 2:
            return
        topic = TOPICS[c % len(TOPICS)]
        year = time.gmtime(min(now, self.t_end)).tm_year
        name = f"{topic} {'Conference' if conference else 'Meetup'} {year}"
        where = CITIES[c % len(CITIES)]
        day = now - now % DAY
        begin, hours = (day + 9 * 3600, 9.0) if conference else (day + 18 * 3600, 3.0)
        meetings = min(limit, int(len(att) * rng.uniform(0.6, 1.6)) + 1)
        natt = len(att)
        for _ in range(meetings):
            a = att[int(rng.random() * natt)]
            b = att[int(rng.random() * natt)]
            if a == b:
                b = att[(att.index(a) + 1) % natt]
            t = begin + rng.random() * hours * 3600
            friends = self._key(a, b) in self.tie_of
            r = rng.random()
            if friends:
                depth = 1 if r < 0.3 else 2 if r < 0.8 else 3
            else:
                depth = 0 if r < 0.5 else 1 if r < 0.85 else 2 if r < 0.97 else 3
            people = [a, b]
            if rng.random() < 0.08 and natt > 4:  # a small group around a table
                for _ in range(rng.randint(1, 3)):
                    x = att[int(rng.random() * natt)]
                    if x not in people:
                        people.append(x)
                depth = min(depth, 2) if depth else 1
            yield self._met(
                t,
                people,
                depth,
                initiated_by=people[0] if rng.random() < 0.4 else None,
                context=name if rng.random() < 0.6 else None,
                where=where if rng.random() < 0.3 else None,
            )
            self._after_meeting(a, b, depth, t)

    def _tie_event(self, t: float, tie: list[Any]) -> dict[str, Any]:
        """One interaction between friends."""
        rng = self.rng
        a, b = (tie[0], tie[1]) if rng.random() < 0.5 else (tie[1], tie[0])
        topic = TOPICS[self.comm[a] % len(TOPICS)]
        r = rng.random()
        if r < 0.28:
            remote = rng.random() < 0.3
            return self._met(
                t, [a, b], 2 if rng.random() < 0.7 else 3, initiated_by=a, remote=remote
            )
        if r < 0.46:
            return self._meal(t, a, b)
        if r < 0.70:
            return self._follow_up(t, a, b, rng.random() < 0.9, rng.choice(FRIEND_CHANNELS))
        if r < 0.80:
            return self._helped(t, a, b, topic)
        if r < 0.88:
            return self._rated(t, a, b, tie)
        return self._introduce_friend(t, a, b, topic)

    def _meal(self, t: float, a: int, b: int) -> dict[str, Any]:
        """A meal or an activity, now and then with a third friend of ``a``."""
        rng = self.rng
        people = [a, b]
        if rng.random() < 0.2:
            for f in self.friends.get(a, ())[:3]:
                if f not in people:
                    people.append(f)
                    break
        return self._met(
            t,
            people,
            4,
            initiated_by=a,
            where=CITIES[self.comm[a] % len(CITIES)] if rng.random() < 0.5 else None,
        )

    def _helped(self, t: float, a: int, b: int, topic: str) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "event_id": self._next_id(),
            "type": "relationship.helped",
            "occurred_at": self._ts(t),
            "helper": self.pid[a],
            "helped": self.pid[b],
        }
        if self.rng.random() < 0.4:
            ev["what"] = f"advice on {topic}"
        return ev

    def _rated(self, t: float, a: int, b: int, tie: list[Any]) -> dict[str, Any]:
        """A closeness rating that follows the tie's weight and falls as the tie ages."""
        age = (t - tie[2]) / (tie[3] - tie[2])
        rating = max(1, min(5, round(1 + 4 * tie[4] * (1.0 - 0.6 * age))))
        return {
            "event_id": self._next_id(),
            "type": "relationship.closeness_rated",
            "occurred_at": self._ts(t),
            "rater": self.pid[a],
            "ratee": self.pid[b],
            "rating": rating,
        }

    def _introduce_friend(self, t: float, a: int, b: int, topic: str) -> dict[str, Any]:
        """``a`` introduces ``b`` to another friend, who often meet soon after (else, with no
        other friend to introduce, a follow-up)."""
        rng = self.rng
        others = [f for f in self.friends.get(a, ()) if f != b]
        if not others:
            return self._follow_up(t, a, b, True, rng.choice(FRIEND_CHANNELS))
        c = others[int(rng.random() * len(others))]
        ev: dict[str, Any] = {
            "event_id": self._next_id(),
            "type": "relationship.introduced",
            "occurred_at": self._ts(t),
            "introducer": self.pid[a],
            "person_a": self.pid[b],
            "person_b": self.pid[c],
        }
        if rng.random() < 0.5:
            ev["reason"] = f"both into {topic}"
        if rng.random() < 0.6:
            self._schedule(t + rng.uniform(3, 30) * DAY, self.MEET, b, c)
        return ev

    # -- the stream -----------------------------------------------------------------------

    def run(self) -> Iterator[dict[str, Any]]:
        """People first; then the clock advances with the share of the budget emitted, and
        at each step the due follow-ups and tie interactions happen, then a gathering."""
        yield from self._people()
        budget = self.cfg.events - self.n
        emitted = 0
        heap = self.heap
        while emitted < budget:
            now = self.act_start + self.act_span * emitted / budget
            while heap and heap[0][0] <= now:
                ev = self._scheduled(heapq.heappop(heap))
                if ev is None:
                    continue
                yield ev
                emitted += 1
                if emitted >= budget:
                    return
            for ev in self._gathering(now, budget - emitted):
                yield ev
                emitted += 1


def simulate(config: SimConfig) -> Iterator[dict[str, Any]]:
    """The simulated events, lazily, in the client form of the batch endpoint."""
    return _Simulation(config).run()


def simulate_lines(config: SimConfig) -> Iterator[str]:
    """The simulated events as JSON Lines (without the newline)."""
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for ev in simulate(config):
        yield encode(ev)


def write_jsonl(config: SimConfig, out: IO[str], flush_every: int = 4096) -> int:
    """Write the simulation to ``out`` as JSON Lines; return the number of lines."""
    buf: list[str] = []
    count = 0
    for line in simulate_lines(config):
        buf.append(line)
        if len(buf) >= flush_every:
            out.write("\n".join(buf) + "\n")
            count += len(buf)
            buf.clear()
    if buf:
        out.write("\n".join(buf) + "\n")
        count += len(buf)
    return count
