"""``tieline calibrate``: which strength and momentum parameters predict a workspace's own
relationships best, validated on its most recent history (projections/strength_model_calibrate.py).

Talks to PostgreSQL directly (``TIELINE_DATABASE_URL``, or ``--data-dir`` of a running
``tieline up``) and reads the live read-model generation: the workspace's history and the sets
it adopted before, which candidates are compared with (the default when it adopted none). It
changes nothing, unless ``--apply``: then the recommended sets are recorded for that workspace
as a ``workspace.model_calibrated`` event through the HTTP API (an admin token), and the
projection recomputes the workspace's read models with them. Exit codes: 0 done, 1 too little
history, 3 ``--apply`` refused because no set beats the workspace's current one on held-out
time (a set equal to the current one is never recorded again).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from tieline.services.cli.client import (
    DEFAULT_API,
    DEFAULT_WORKSPACE,
    Api,
    ApiUrl,
    AsJson,
    Token,
    emit_json,
    out,
)
from tieline.services.cli.ops import DataDir, ops_settings, run_db

console = Console()
#: ``--apply`` found nothing to adopt: no set beats the current one on held-out time.
EXIT_NOT_BETTER = 3


def _ci(ci: list[float]) -> str:
    if any(math.isnan(x) for x in ci):
        return "n/a"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def calibrate_cmd(
    ctx: typer.Context,
    workspace: Annotated[
        str, typer.Option("--workspace", "-w", envvar="TIELINE_WORKSPACE", help="Workspace id.")
    ] = DEFAULT_WORKSPACE,
    holdout: Annotated[
        float, typer.Option(help="Share of the history's span held out (most recent).")
    ] = 0.25,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = 300,
    model: Annotated[
        list[str] | None, typer.Option(help="strength and/or momentum (default: both).")
    ] = None,
    data_dir: DataDir = None,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Adopt the recommended sets for this workspace only (admin token; recorded as "
            "a workspace.model_calibrated event). Refused (exit 3) when none beats the "
            "workspace's current sets (adopted before, or the default).",
        ),
    ] = False,
    api_url: ApiUrl = DEFAULT_API,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Replay the workspace's history, hold out its most recent part, search the documented
    parameter ranges on the part before it, and report AUC and precision@10 of the
    workspace's current set (its latest adoption, or the default) and the best set on the
    held-out time. Recommends a set only if it beats the current one there (95% interval of
    the AUC gain above zero). Nothing is changed unless ``--apply``."""
    from tieline.projections.strength_model_calibrate import calibrate

    models = tuple(model or ("strength", "momentum"))
    if any(m not in ("strength", "momentum") for m in models):
        raise typer.BadParameter("--model is strength or momentum")
    events, adopted, adopted_at = _history(data_dir, workspace)
    if not events:
        out(f"tieline calibrate: workspace {workspace!r} has no relationship events")
        raise typer.Exit(1)
    try:
        report = calibrate(events, holdout, bootstrap, models, adopted, adopted_at)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    report["workspace"] = workspace
    if apply and "refused" not in report:
        report["applied"] = _apply(Api.of(ctx, api_url, workspace, token, as_json), report)
    if as_json:
        emit_json(report)
    else:
        _show(report)
    if "refused" in report:
        raise typer.Exit(1)
    if apply and report["applied"] is None:
        raise typer.Exit(EXIT_NOT_BETTER)


def _history(data_dir: Any, workspace: str) -> Any:
    """(the workspace's pair events, the sets it adopted, when each was recorded) from the
    live read-model generation (None, {}, {}: no generation)."""
    from tieline.projections import generations
    from tieline.projections.strength_model_calibrate import (
        adopted_sets,
        adoption_times,
        workspace_events,
    )

    settings = ops_settings(data_dir, "tieline calibrate")

    async def load(conn: Any) -> Any:
        gen = await generations.live(conn, settings.database_schema)
        if gen is None:
            return None, {}, {}
        schema = gen.schema_name
        events = await workspace_events(conn, schema, workspace)
        adopted = await adopted_sets(conn, schema, workspace)
        return events, adopted, await adoption_times(conn, schema, workspace, adopted)

    return run_db("tieline calibrate", settings, load)


def _apply(api: Api, report: dict[str, Any]) -> dict[str, Any] | None:
    """Record the recommended sets for the workspace (None: nothing beats the current sets)."""
    from tieline.projections.strength_model_calibrate import adoption

    body = adoption(report)
    if body is None:
        return None
    answer = api.post("/events", body, unsure="; it may have been recorded: check before again")
    return {**body, "seq": answer.get("seq"), "event_id": answer.get("event_id")}


def _show(report: dict[str, Any]) -> None:
    sel, val = report["selection"], report["validation"]
    out(
        f"workspace {report['workspace']}: {report['contacts']} contacts, {report['pairs']} "
        f"pairs; label {report['label']}; choose at {sel['cutoff']} ({sel['pairs']} pairs), "
        f"validate at {val['cutoff']} ({val['pairs']} pairs, {val.get('positives')} positive)"
    )
    if "refused" in report:
        out(f"refused: {report['refused']}")
        return
    console.print(_table(report))
    _verdicts(report)
    if "applied" not in report:
        return
    applied = report["applied"]
    if applied is None:
        out(
            "--apply refused: no parameter set beats the workspace's current one on held-out "
            "time; nothing changed"
        )
    else:
        sets = {m: applied[m]["version"] for m in ("strength", "momentum") if m in applied}
        out(f"applied to workspace {report['workspace']}: {sets} (event seq {applied['seq']});")
        out("the projection recomputes the workspace's relationships with them")


def _table(report: dict[str, Any]) -> Table:
    """Per model: the baseline set, the best candidate and the best simple baseline."""
    table = Table("model", "set", "held-out AUC", "P@10", "AUC gain 95% CI", "P@10 gain 95% CI")
    for name, r in report["models"].items():
        base = r["baseline"]["name"]
        table.add_row(name, base, f"{r['auc']['baseline']:.3f}", f"{r['p_at_10']['baseline']:.3f}")
        same = r["best"] == r["baseline"]["values"]
        table.add_row(
            "",
            f"best of {r['candidates'] + 1}" + (": the same set" if same else ""),
            f"{r['auc']['best']:.3f}",
            f"{r['p_at_10']['best']:.3f}",
            "" if same else _ci(r["auc_best_minus_baseline_ci95"]),
            "" if same else _ci(r["p_at_10_best_minus_baseline_ci95"]),
        )
        simple = r.get("simple_baseline")
        if simple:
            table.add_row(
                "",
                f"simple baseline: {simple['name']}",
                f"{simple['auc']:.3f}",
                f"{simple['p_at_10']:.3f}",
                f"kept set - it: {_ci(simple['auc_kept_minus_it_ci95'])}",
                "",
            )
    return table


def _verdicts(report: dict[str, Any]) -> None:
    """One line per model: recommended or not, and against the best simple baseline."""
    for name, r in report["models"].items():
        base = r["baseline"]["name"]
        changed: Any = {k: v for k, v in r["best"].items() if r["default"].get(k) != v}
        changed = changed or "the default"
        if r["recommend"]:
            out(f"{name}: recommended {changed} (beats the {base} set on held-out time)")
        elif r["best"] == r["baseline"]["values"]:
            out(f"{name}: the {base} set stays (no candidate did better before the held-out time)")
        else:
            out(
                f"{name}: not recommended {changed}: it does not beat the {base} set "
                "on held-out time"
            )
    for name, r in report["models"].items():
        _since(name, r.get("since_adoption"))
    for name, r in report["models"].items():
        simple = r.get("simple_baseline")
        if simple:
            verbs = {True: "beats", False: "does not beat", None: "was not tested against"}
            verb = verbs[simple["beaten"]]
            out(
                f"{name}: the set it leaves {verb} the best simple baseline ({simple['name']}) "
                f"on held-out time (AUC gain {_ci(simple['auc_kept_minus_it_ci95'])})"
            )


def _since(name: str, since: dict[str, Any] | None) -> None:
    """The forward check of the adopted set (the history after its adoption), if any."""
    if not since:
        return
    head = f"{name}: since its adoption ({since['adopted_at']})"
    if "refused" in since:
        out(f"{head}: not checked, {since['refused']}")
        return
    aucs = since["auc"]
    out(
        f"{head}, {since['pairs']} pairs, {since['positives']} positive: adopted set AUC "
        f"{aucs['adopted']:.3f}, default {aucs['default']:.3f}, gain "
        f"{_ci(since['auc_adopted_minus_default_ci95'])}"
    )


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
