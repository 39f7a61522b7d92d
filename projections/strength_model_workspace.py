"""A workspace's model: the strength and momentum parameter sets its read models use.

Every workspace starts on the defaults (:data:`~.strength_model_params.PARAMS`,
:data:`~.strength_model_momentum.MOMENTUM_PARAMS`). A ``workspace.model_calibrated`` event
(``tieline calibrate --apply``) adopts other sets for that workspace only. The rule, exact and
simple: **the latest unretracted adoption of each model applies to the workspace's whole
history**, events before it included; so an adoption (or its retraction) recomputes every pair
of the workspace, and a rebuild from the log gives the same rows. Pure: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tieline.projections.strength_model_momentum import (
    MOMENTUM_PARAMS,
    MOMENTUM_SETS,
    MomentumParams,
)
from tieline.projections.strength_model_params import PARAMS, Params

#: The event type that adopts parameter sets for one workspace.
MODEL_CALIBRATED = "workspace.model_calibrated"


@dataclass(frozen=True)
class WorkspaceModel:
    """The parameter sets one workspace's read models are computed with."""

    strength: Params = PARAMS
    momentum: MomentumParams = MOMENTUM_PARAMS


DEFAULT_MODEL = WorkspaceModel()


def parameter_set(values: Mapping[str, float], base_version: str) -> dict[str, Any]:
    """The ``ParameterSet`` of an event for ``values`` (changes to the default set): its
    version names the default it starts from and every change, so it is unique and readable,
    e.g. ``2026.1+slow_half_life_days=180,slow_share=0.1``."""
    changes = ",".join(f"{k}={float(v)!r}" for k, v in sorted(values.items()))
    return {
        "version": f"{base_version}+{changes}" if changes else base_version,
        "values": {k: float(v) for k, v in sorted(values.items())},
    }


def _values(version: str, base_version: str) -> dict[str, float] | None:
    """The changes a version of :func:`parameter_set` names (None: not one of ours)."""
    if version == base_version:
        return {}
    if not version.startswith(base_version + "+"):
        return None
    out: dict[str, float] = {}
    for part in version[len(base_version) + 1 :].split(","):
        key, _, value = part.partition("=")
        out[key] = float(value)
    return out


@functools.lru_cache(maxsize=256)
def strength_params(version: str) -> Params:
    """The strength set a stored ``params_version`` names: the default, or the default with
    the changes the version spells out; an unknown version (a what-if set) gives the
    default."""
    values = _values(version, PARAMS.version)
    if not values:
        return PARAMS
    return Params.from_dict({**values, "version": version}, PARAMS)


def momentum_base(version: str) -> str:
    """The momentum set a version starts from: ``momentum-2026.1`` for a set adopted before
    ``momentum-2026.2`` (its changes are to 2026.1's values), else the default's."""
    head = version.split("+", 1)[0]
    return head if head in MOMENTUM_SETS else MOMENTUM_PARAMS.version


def adopted_base(name: str, adopted: Mapping[str, Any]) -> str:
    """The default version an adopted set of model ``name`` (an event's ``{"version",
    "values"}``) holds changes to: strength has one; a momentum set names its own
    (:func:`momentum_base`), except that no changes means "back to the default", whichever
    default the event was recorded under (a 2026.1-era return to the default is 2026.2 now)."""
    if name == "strength":
        return PARAMS.version
    if not adopted.get("values"):
        return MOMENTUM_PARAMS.version
    return momentum_base(str(adopted.get("version") or ""))


@functools.lru_cache(maxsize=256)
def momentum_params(version: str) -> MomentumParams:
    """The momentum set a stored ``momentum_version`` names (as :func:`strength_params`):
    every set of :data:`MOMENTUM_SETS`, with or without changes, reads back as it was."""
    base = MOMENTUM_SETS[momentum_base(version)]
    values = _values(version, base.version)
    if not values:
        return base
    result: MomentumParams = MomentumParams.from_dict({**values, "version": version}, base)
    return result


def model_of(payloads: Iterable[Mapping[str, Any]], base: Params = PARAMS) -> WorkspaceModel:
    """The model from a workspace's unretracted adoption payloads, **newest first**: for each
    model the newest payload that sets it wins. ``base``: the strength set a workspace without
    an adoption uses (the generation's, e.g. a what-if set). The version of an adopted set is
    derived from its values (:func:`parameter_set`), whatever the event called it, so a
    stored version always names its values exactly; of the name only the momentum set it
    starts from is read (:func:`adopted_base`), since a set adopted before
    ``momentum-2026.2`` holds changes to ``momentum-2026.1``."""
    strength: Params | None = None
    momentum: MomentumParams | None = None
    for p in payloads:
        s, m = p.get("strength"), p.get("momentum")
        if strength is None and s is not None:
            strength = _usable(strength_params, s["values"], adopted_base("strength", s))
        if momentum is None and m is not None:
            momentum = _usable(momentum_params, m["values"], adopted_base("momentum", m))
    return WorkspaceModel(strength or base, momentum or MOMENTUM_PARAMS)


def _usable(make: Any, values: Mapping[str, float], base_version: str) -> Any:
    """The set ``values`` make, or None when the model cannot use them (an unknown name or a
    value out of range, recorded by hand): such an adoption is ignored, never fatal."""
    try:
        return make(parameter_set(values, base_version)["version"])
    except (ValueError, TypeError):
        return None


def adopted_sets(model: WorkspaceModel) -> dict[str, dict[str, Any]]:
    """The sets of ``model`` that are not the defaults, per model, as :func:`parameter_set`
    dicts (``version`` and ``values``): what the workspace adopted and still uses. A model
    left out is on its default (never adopted, retracted, or adopted back to the default); a
    set whose version is not one of ours (a what-if generation's base) counts as the
    default too. A momentum set adopted on ``momentum-2026.1`` keeps that base."""
    out: dict[str, dict[str, Any]] = {}
    for name, version, base in (
        ("strength", model.strength.version, PARAMS.version),
        ("momentum", model.momentum.version, momentum_base(model.momentum.version)),
    ):
        values = _values(version, base)
        if values:
            out[name] = parameter_set(values, base)
    return out
