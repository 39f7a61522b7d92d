"""Likely duplicates in a people directory: the same e-mail address, the same phone number, or
near-identical names. Pure functions over decrypted directory rows (the route decrypts).

Names are compared after folding case and accents, dropping punctuation and sorting the words
("Hopper, Grace" and "grace hopper" are the same name); names that differ only a little
(a similarity ratio of at least :data:`NAME_RATIO`, e.g. "Grace Hoper", "Linus B. Torvalds")
count too; only names that share a word are compared, to keep the work near-linear.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

#: Two names at least this similar (difflib ratio of their folded forms) are near-identical.
NAME_RATIO = 0.9
_WORD = re.compile(r"[^\W_]+")


def fold_name(name: str) -> str:
    """``"Hopper, Grâce"`` -> ``"grace hopper"``: the words, unaccented, lower case, sorted."""
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return " ".join(sorted(_WORD.findall(plain.casefold())))


def _email(value: Any) -> str | None:
    return value.strip().lower() if isinstance(value, str) and "@" in value else None


def _phone(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits[-9:] if len(digits) >= 6 else None  # the national part, prefixes aside


class _Groups:
    """Union-find over person ids, with the reasons each union was made for."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.reasons: dict[tuple[str, str], set[str]] = {}

    def find(self, p: str) -> str:
        self.parent.setdefault(p, p)
        while self.parent[p] != p:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def join(self, a: str, b: str, why: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        self.reasons.setdefault((min(a, b), max(a, b)), set()).add(why)


def _join_equal(groups: _Groups, keyed: Iterable[tuple[str | None, str]], why: str) -> None:
    first: dict[str, str] = {}
    for key, pid in keyed:
        if key is None:
            continue
        if key in first:
            groups.join(first[key], pid, why)
        else:
            first[key] = pid


def _join_similar_names(groups: _Groups, names: dict[str, str]) -> None:
    # Only names that share a word (of 3 letters or more) are compared: near-linear for real
    # directories, and a near-identical name shares at least one word.
    blocks: dict[str, list[str]] = {}
    for pid, folded in names.items():
        for word in set(folded.split()):
            if len(word) >= 3:
                blocks.setdefault(word, []).append(pid)
    done: set[tuple[str, str]] = set()
    for members in blocks.values():
        for i, pa in enumerate(members):
            for pb in members[i + 1 :]:
                pair = (min(pa, pb), max(pa, pb))
                if pair in done:
                    continue
                done.add(pair)
                na, nb = names[pa], names[pb]
                if na == nb:
                    groups.join(pa, pb, "same name")
                elif difflib.SequenceMatcher(None, na, nb).ratio() >= NAME_RATIO:
                    groups.join(pa, pb, "similar names")


def duplicate_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups of two or more people who are likely one person, each with its people and the
    reasons (``same email``, ``same phone``, ``same name``, ``similar names``); forgotten
    people are left out."""
    live = [r for r in rows if not r.get("forgotten")]
    groups = _Groups()
    _join_equal(groups, ((_email(r.get("email")), r["person_id"]) for r in live), "same email")
    _join_equal(groups, ((_phone(r.get("phone")), r["person_id"]) for r in live), "same phone")
    names = {r["person_id"]: fold_name(str(r.get("display_name") or "")) for r in live}
    _join_similar_names(groups, names)
    members: dict[str, list[dict[str, Any]]] = {}
    for r in live:
        members.setdefault(groups.find(r["person_id"]), []).append(r)
    out: list[dict[str, Any]] = []
    for root, people in members.items():
        if len(people) < 2:
            continue
        ids = {p["person_id"] for p in people}
        why = sorted(
            {w for (a, b), ws in groups.reasons.items() if a in ids and b in ids for w in ws}
        )
        people.sort(key=lambda p: p["person_id"])
        out.append({"people": people, "reasons": why, "key": root})
    out.sort(key=lambda g: str(g["key"]))
    return out
