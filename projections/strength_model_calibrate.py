"""Calibration by replay: which parameters predict *this* workspace's relationships best?

``tieline calibrate`` (services/cli/calibrate.py) reads a workspace's history (every stored pair
event that is not retracted, from the live read-model generation: what the projection made of
the log), and then, for strength and for momentum separately:

1. **Holds out the most recent part.** With ``h`` the held-out share of the span (first to last
   contact): the *selection* cut-off is at ``1 - 2h`` with labels up to ``1 - h``, the
   *validation* cut-off at ``1 - h`` with labels up to the end. Nothing after ``1 - h`` is seen
   while choosing.
2. **Searches the documented ranges** (:data:`STRENGTH_GRID`, ``MOMENTUM_GRID``): each candidate
   is scored by ROC AUC on the primary label (the relationship continues two-way) at the
   selection cut-off; the best one is kept (the default wins ties).
3. **Validates on held-out time** against the workspace's **baseline**: the set it uses now,
   i.e. its latest unretracted adoption of that model (:func:`adopted_sets`), or the default
   when it adopted none. Baseline and best are evaluated at the validation cut-off (AUC and
   precision@10 per person, each with a 95% paired-bootstrap interval of best - baseline). A
   set is *recommended* only if it differs from the baseline and the interval of its AUC gain
   lies above zero; otherwise the report says the baseline stays. The report also compares
   the set the workspace is left on with the best *simple* baseline there (count, recency, a
   decayed count, ...): a model that does not beat recency on a workspace's own held-out time
   is worth no more than recency there, and the user should know. The baseline is candidate 0
   at the selection cut-off (it wins ties), and the default is always among the candidates, so
   a workspace can also be recommended back onto the default.

The report changes nothing. :func:`adoption` turns the recommended sets into the body of a
``workspace.model_calibrated`` event (``tieline calibrate --apply`` records it; the projection
then recomputes the workspace with them, projections/strength_model_workspace.py); with no
recommended set there is nothing to adopt, so a set equal to the current one is never
recorded again.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, sql
from tieline.projections.strength_model import PARAMS, PairEvent, Params, strength
from tieline.projections.strength_model_eval import (
    BASELINES,
    PRIMARY,
    TOP_K,
    Contact,
    Pair,
    Table,
    best_baseline,
    build,
    contacts_of,
    score_all,
)
from tieline.projections.strength_model_momentum import (
    MOMENTUM_GRID,
    MOMENTUM_PARAMS,
    MomentumParams,
    combine,
    parts,
)
from tieline.projections.strength_model_stats import (
    auc,
    auc_difference_ci,
    mean_difference_ci,
    per_person_precision,
)
from tieline.projections.strength_model_workspace import (
    MODEL_CALIBRATED,
    adopted_base,
    momentum_params,
    parameter_set,
    strength_params,
)
from tieline.projections.strength_model_workspace import adopted_sets as _adopted
from tieline.projections.workspace_models import workspace_model

#: The documented range of the strength parameters calibration searches (docs/strength-model.md).
STRENGTH_GRID: dict[str, tuple[float, ...]] = {
    "fast_half_life_days": (7.0, 30.0, 90.0),
    "slow_half_life_days": (180.0, 730.0),
    "slow_share": (0.1, 0.3),
    "reciprocity_penalty": (0.0, 0.3),
}
MIN_PAIRS = 20


async def workspace_events(
    conn: AsyncConnection[Any], schema: str, workspace: str
) -> dict[Pair, list[PairEvent]]:
    """Every pair event of ``workspace`` that counts (not retracted), from read-model ``schema``."""
    cur = await conn.execute(
        sql.SQL(
            """SELECT person_a, person_b, event_id, type, occurred_at, seq, detail
               FROM {}.pair_events_v1 WHERE workspace_id = %s AND NOT retracted"""
        ).format(sql.Identifier(schema)),
        (workspace,),
    )
    out: dict[Pair, list[PairEvent]] = {}
    for r in await cur.fetchall():
        a, b = str(r[0]), str(r[1])
        e = PairEvent(str(r[2]), str(r[3]), r[4], int(r[5]), a, b, r[6] or {})
        out.setdefault((a, b), []).append(e)
    return out


async def adopted_sets(
    conn: AsyncConnection[Any], schema: str, workspace: str
) -> dict[str, dict[str, Any]]:
    """The sets ``workspace`` adopted and uses now in read-model ``schema`` (its latest
    unretracted ``workspace.model_calibrated`` per model; projections/workspace_models.py):
    ``{model: {"version", "values"}}``, a model left out being on its default."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        model = await workspace_model(conn, workspace)
    return _adopted(model)


async def adoption_times(
    conn: AsyncConnection[Any], schema: str, workspace: str, adopted: Mapping[str, Any]
) -> dict[str, datetime]:
    """When each set in ``adopted`` (:func:`adopted_sets`) was recorded: the newest unretracted
    ``workspace.model_calibrated`` event that sets that model to exactly that set."""
    cur = await conn.execute(
        sql.SQL(
            """SELECT payload::text, recorded_at FROM {}.events
               WHERE workspace_id = %s AND type = %s AND retracted_by IS NULL
               ORDER BY seq DESC"""
        ).format(sql.Identifier(schema)),
        (workspace, MODEL_CALIBRATED),
    )
    out: dict[str, datetime] = {}
    for text, recorded_at in await cur.fetchall():
        payload = orjson.loads(text)  # text: whatever JSON loader the connection has
        for name, current in adopted.items():
            found = payload.get(name) if isinstance(payload, dict) else None
            if name in out or not isinstance(found, dict):
                continue
            try:
                base = adopted_base(name, found)
                version = parameter_set(found.get("values") or {}, base)["version"]
            except (TypeError, ValueError):
                continue
            if version == current["version"]:
                out[name] = recorded_at
    return out


def _grid(ranges: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    keys = list(ranges)
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*ranges.values())]


@dataclass(frozen=True)
class Model:
    """One score family: its default, its candidates, how to score a pair with a set, and the
    baseline candidates must beat (the workspace's current set; the default if none)."""

    name: str
    default: dict[str, float]
    candidates: list[dict[str, float]]
    scorer: Callable[[dict[str, float]], Any]
    #: The whole set a stored version names (the version a workspace's adoption has).
    params_of: Callable[[str], Any]
    baseline: dict[str, float] | None = None
    baseline_name: str = "default"

    @property
    def base(self) -> dict[str, float]:
        return self.default if self.baseline is None else self.baseline


def _with_baseline(model: Model, adopted: Mapping[str, Any] | None) -> Model:
    """``model`` compared with an adopted set (``{"version", "values"}``, changes to the
    default) instead of the default; the default stays a candidate."""
    if not adopted:
        return model
    # the adopted set as a whole (a momentum set adopted on momentum-2026.1 keeps that base)
    whole = model.params_of(str(adopted["version"]))
    base = {k: float(getattr(whole, k)) for k in model.default}
    if base == model.default:
        return model
    extra = [] if model.default in model.candidates else [model.default]
    return replace(
        model,
        candidates=[*model.candidates, *extra],
        baseline=base,
        baseline_name=f"adopted {adopted['version']}",
    )


def _models() -> list[Model]:
    def strength_scorer(change: dict[str, float]) -> Any:
        p = Params.from_dict(change) if change else PARAMS
        return lambda pair, train, ctx: strength(train, p, as_of=ctx.cutoff).score

    # A pair's momentum parts at a cut-off depend on the episode gap only, so they are found
    # once per pair, cut-off and gap and every candidate combines them (360 candidates).
    found: dict[tuple[Pair, datetime, float], Any] = {}

    def momentum_scorer(change: dict[str, float]) -> Any:
        p = MomentumParams.from_dict(change) if change else MOMENTUM_PARAMS

        def score(pair: Pair, train: Sequence[PairEvent], ctx: Any) -> float:
            key = (pair, ctx.cutoff, p.episode_gap_days)
            if key not in found:
                at = parts(train, ctx.cutoff, ctx.people_last_active, p.episode_gap_days)
                found[key] = at and (*at, ctx.common_neighbours(pair))
            return 0.0 if found[key] is None else combine(p, *found[key])

        return score

    s_default = {k: float(getattr(PARAMS, k)) for k in STRENGTH_GRID}
    m_default = {k: float(getattr(MOMENTUM_PARAMS, k)) for k in MOMENTUM_GRID}
    return [
        Model("strength", s_default, _grid(STRENGTH_GRID), strength_scorer, strength_params),
        Model("momentum", m_default, _grid(MOMENTUM_GRID), momentum_scorer, momentum_params),
    ]


def _select(model: Model, table: Table, events: Mapping[Pair, Sequence[PairEvent]]) -> Any:
    """(best set, its AUC, the baseline's AUC) at the selection cut-off."""
    y = table.labels[PRIMARY]
    found = []
    for i, change in enumerate([model.base, *model.candidates]):
        scores = score_all(table, events, {"s": model.scorer(change)})["s"]
        found.append((auc(scores, y), -i, change))
    best = max(found, key=lambda f: (f[0], f[1]))
    return best[2], best[0], found[0][0]


def choose(
    name: str,
    contacts: Sequence[Contact],
    events: Mapping[Pair, Sequence[PairEvent]],
    cutoff: float,
    end: float,
) -> tuple[dict[str, float], Any]:
    """The best parameter change of model ``name`` chosen at ``cutoff`` with labels up to
    ``end`` (nothing at or after ``end`` is seen), and a scorer with it."""
    model = next(m for m in _models() if m.name == name)
    best, _, _ = _select(model, build(contacts, cutoff, end=end), events)
    return best, model.scorer(best)


def _validate(
    model: Model,
    best: dict[str, float],
    table: Table,
    events: Mapping[Pair, Sequence[PairEvent]],
    bootstrap: int,
) -> dict[str, Any]:
    y = table.labels[PRIMARY]
    scored = score_all(
        table, events, {"baseline": model.scorer(model.base), "best": model.scorer(best)}
    )
    p10 = {k: per_person_precision(table.people, v, y, TOP_K) for k, v in scored.items()}
    mean = {k: sum(v.values()) / max(len(v), 1) for k, v in p10.items()}
    ci = auc_difference_ci(scored["best"], scored["baseline"], y, bootstrap)
    recommend = best != model.base and ci[0] > 0
    kept = scored["best"] if recommend else scored["baseline"]
    return {
        "auc": {k: auc(v, y) for k, v in scored.items()},
        "auc_best_minus_baseline_ci95": ci,
        "p_at_10": mean,
        "p_at_10_best_minus_baseline_ci95": mean_difference_ci(
            p10["best"], p10["baseline"], bootstrap
        ),
        "recommend": recommend,
        "simple_baseline": _against_simple(table, kept, bootstrap),
    }


def _against_simple(table: Table, kept: Sequence[float], bootstrap: int) -> dict[str, Any]:
    """The best simple baseline on held-out time (count, recency, a decayed count, ...:
    ``strength_model_eval.BASELINES``, the best by AUC) and the interval of (the set the
    workspace is left on - it): whether the model is worth more than counting here at all."""
    y = table.labels[PRIMARY]
    aucs = {b: auc(table.features[b], y) for b in BASELINES}
    name = best_baseline(aucs)
    p10 = per_person_precision(table.people, table.features[name], y, TOP_K)
    ci = auc_difference_ci(kept, table.features[name], y, bootstrap)
    return {
        "name": name,
        "auc": aucs[name],
        "p_at_10": sum(p10.values()) / max(len(p10), 1),
        "auc_kept_minus_it_ci95": ci,
        "beaten": None if math.isnan(ci[0]) else ci[0] > 0,  # None: no resamples, not tested
    }


def since_adoption(
    model: Model,
    adopted_at: datetime,
    contacts: Sequence[Contact],
    events: Mapping[Pair, Sequence[PairEvent]],
    bootstrap: int,
) -> dict[str, Any]:
    """A forward check of an adoption: the adopted set against the default on the history
    recorded *after* the adoption, which nobody had seen when the set was chosen (candidates:
    the pairs in contact before it; labels: the primary label, up to the last contact, so a
    recent adoption has its labels cut short)."""
    cut = adopted_at.timestamp()
    out: dict[str, Any] = {"adopted_at": adopted_at.isoformat()}
    if not contacts or contacts[-1].t <= cut:
        out["refused"] = "no contact since the adoption"
        return out
    table = build(contacts, cut)
    y = table.labels[PRIMARY]
    out.update(pairs=len(table.pairs), positives=sum(y))
    if len(y) < MIN_PAIRS or sum(y) in (0, len(y)):
        out["refused"] = (
            f"too little history since the adoption (needs {MIN_PAIRS}+ pairs, both classes)"
        )
        return out
    scored = score_all(
        table, events, {"adopted": model.scorer(model.base), "default": model.scorer(model.default)}
    )
    out["auc"] = {k: auc(v, y) for k, v in scored.items()}
    out["auc_adopted_minus_default_ci95"] = auc_difference_ci(
        scored["adopted"], scored["default"], y, bootstrap
    )
    return out


def calibrate(
    events: Mapping[Pair, Sequence[PairEvent]],
    holdout_share: float = 0.25,
    bootstrap: int = 300,
    models: Sequence[str] = ("strength", "momentum"),
    adopted: Mapping[str, Mapping[str, Any]] | None = None,
    adopted_at: Mapping[str, datetime] | None = None,
) -> dict[str, Any]:
    """The calibration report of one workspace's events (see the module docstring).
    ``adopted``: the sets the workspace uses now (:func:`adopted_sets`); each model's
    candidates are compared with its adopted set, or with the default when it has none.
    ``adopted_at``: when each adopted set was recorded (:func:`adoption_times`); such a model's
    report adds ``since_adoption`` (:func:`since_adoption`)."""
    if not 0.05 <= holdout_share <= 0.45:
        raise ValueError("holdout_share must be in [0.05, 0.45]")
    contacts: list[Contact] = contacts_of(events)
    if not contacts:
        raise ValueError("the workspace has no contacts to calibrate on")
    first, last = contacts[0].t, contacts[-1].t
    select_cut = first + (1 - 2 * holdout_share) * (last - first)
    validate_cut = first + (1 - holdout_share) * (last - first)
    inner = build(contacts, select_cut, end=validate_cut)
    outer = build(contacts, validate_cut)
    report: dict[str, Any] = {
        "contacts": len(contacts),
        "pairs": len(events),
        "label": PRIMARY,
        "holdout_share": holdout_share,
        "selection": {"cutoff": inner.context.cutoff.isoformat(), "pairs": len(inner.pairs)},
        "validation": {"cutoff": outer.context.cutoff.isoformat(), "pairs": len(outer.pairs)},
        "models": {},
    }
    for table, name in ((inner, "selection"), (outer, "validation")):
        positives = sum(table.labels[PRIMARY])
        report[name]["positives"] = positives
        if len(table.pairs) < MIN_PAIRS or positives in (0, len(table.pairs)):
            report["refused"] = f"too little history: {name} has {len(table.pairs)} pairs, "
            report["refused"] += f"{positives} positive (needs {MIN_PAIRS}+ and both classes)"
            return report
    for plain in (m for m in _models() if m.name in models):
        model = _with_baseline(plain, (adopted or {}).get(plain.name))
        best, best_auc, base_auc = _select(model, inner, events)
        result = _validate(model, best, outer, events, bootstrap)
        result["selection_auc"] = {"baseline": base_auc, "best": best_auc}
        result["baseline"] = {"name": model.baseline_name, "values": model.base}
        result["default"] = model.default
        result["best"] = best
        result["candidates"] = len(model.candidates)
        when = (adopted_at or {}).get(model.name)
        if model.baseline is not None and when is not None:
            result["since_adoption"] = since_adoption(model, when, contacts, events, bootstrap)
        report["models"][model.name] = result
    return report


def adoption(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``workspace.model_calibrated`` command for the sets ``report`` recommends (each
    only the values that differ from the default, with its held-out evidence against the
    baseline), or None when it recommends none: a set that does not beat the workspace's
    current set (adopted, or the default) on held-out time is never adopted, and neither is
    a set equal to the current one."""
    if "refused" in report:
        return None
    body: dict[str, Any] = {
        "type": MODEL_CALIBRATED,
        "holdout_share": report["holdout_share"],
        "validated_at": report["validation"]["cutoff"],
        "evidence": {},
    }
    base = {"strength": PARAMS.version, "momentum": MOMENTUM_PARAMS.version}
    for name, r in report["models"].items():
        current = r.get("baseline", {}).get("values", r["default"])
        if not r["recommend"] or r["best"] == current:
            continue
        changed = {k: v for k, v in r["best"].items() if r["default"].get(k) != v}
        body[name] = parameter_set(changed, base[name])
        lo, hi = r["auc_best_minus_baseline_ci95"]
        evidence = {
            f"{name}_auc_baseline": r["auc"]["baseline"],
            f"{name}_auc": r["auc"]["best"],
            f"{name}_auc_gain_lo": lo,
            f"{name}_auc_gain_hi": hi,
            f"{name}_p_at_10_baseline": r["p_at_10"]["baseline"],
            f"{name}_p_at_10": r["p_at_10"]["best"],
        }
        body["evidence"].update({k: v for k, v in evidence.items() if v == v})  # no NaN
    return body if any(m in body for m in base) else None
