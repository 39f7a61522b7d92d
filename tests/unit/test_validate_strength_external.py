"""The eleventh look's protocol (bench/validate_strength_external.py): the selection never
reads a hospital cell, and the decision is the one written down before the run."""

from __future__ import annotations

from bench import validate_strength_external as ext


def test_the_selection_cells_never_include_the_hospital() -> None:
    keys = ext.selection_keys()
    assert len(keys) == 16 and len(set(keys)) == 16
    assert {k[0] for k in keys} == {"primary_school", "thiers_2012", "collegemsg"}
    assert {k[2] for k in keys if k[0] != "primary_school"} == {0.3, 0.4}


def test_the_decision_needs_both_hospital_cells_above_zero_and_no_loss() -> None:
    win = {
        ("hospital", "time", 0.6): [0.001, 0.05],
        ("hospital", "count", 0.6): [0.002, 0.04],
        ("collegemsg", "time", 0.6): [-0.01, 0.03],
    }
    assert ext.verdict(win).startswith("ADOPT")
    tie = {**win, ("hospital", "count", 0.6): [-0.001, 0.04]}
    assert ext.verdict(tie).startswith("NOT ADOPTED: not above zero on both hospital cells")
    loss = {**win, ("thiers_2012", "time", 0.6): [-0.03, -0.001]}
    assert ext.verdict(loss) == "NOT ADOPTED: below zero in a reported cell"


def test_cells_without_a_defined_auc_are_left_out_of_the_choice() -> None:
    """A cell whose labels are all negative has AUC NaN; left in, ``min`` over margins with
    NaN answers by the order of the list (the first run's choice was such an artefact)."""
    from bench import validate_strength_rounds as rounds
    from bench import validate_strength_wide as wide

    parts = [rounds.Parts(2, 0.1, 0.1, 0.1, 1), rounds.Parts(5, 0.5, 0.2, 0.1, 0)]
    defined = wide.Cell.of(parts, [True, False], "count", [2.0, 5.0])
    undefined = wide.Cell.of(parts, [False, False], "count", [2.0, 5.0])
    cells = {("a", "time", 0.3): undefined, ("a", "time", 0.6): defined}
    assert list(ext.informative(cells)) == [("a", "time", 0.6)]
