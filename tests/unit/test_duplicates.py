"""Likely duplicate people (services/api/duplicates.py)."""

from __future__ import annotations

from typing import Any

from tieline.services.api.duplicates import duplicate_groups, fold_name


def person(pid: str, name: str, email: str | None = None, phone: str | None = None) -> Any:
    return {"person_id": pid, "display_name": name, "email": email, "phone": phone}


def test_names_fold_case_accents_punctuation_and_order() -> None:
    assert fold_name("Hopper, Grâce") == fold_name("grace  HOPPER") == "grace hopper"


def test_groups_by_email_phone_and_names() -> None:
    rows = [
        person("a1", "Ada Lovelace", "ada@example.org"),
        person("a2", "Augusta Ada King", "ADA@example.org "),
        person("g1", "Grace Hopper", phone="+1 (555) 010-0100"),
        person("g2", "G. Hopper", phone="555 010 0100"),
        person("l1", "Linus Torvalds"),
        person("l2", "Linus B. Torvalds"),
        person("k1", "Katherine Johnson"),
        person("m1", "Margaret Hamilton"),
        person("m2", "Margaret Hamilton"),
        person("x1", "Grace Kelly"),
    ]
    got = {tuple(p["person_id"] for p in g["people"]): g["reasons"] for g in duplicate_groups(rows)}
    assert got == {
        ("a1", "a2"): ["same email"],
        ("g1", "g2"): ["same phone"],
        ("l1", "l2"): ["similar names"],
        ("m1", "m2"): ["same name"],
    }


def test_no_duplicates_no_groups() -> None:
    assert duplicate_groups([person("a", "Ada"), person("b", "Bob")]) == []
