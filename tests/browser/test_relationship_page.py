"""The relationship page in a real browser: the chart has one marker per event at the
timeline's strength_after, its line ends at the API's score and follows the model between
events, the "as of" date redraws everything, and the chart can be walked with the keyboard."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Network, screenshot, sign_in

CHART = """() => {
  const c = Chart.getChart(document.getElementById("strength-chart"));
  return {
    events: c.data.datasets[0].data.map((p) => [p.x, p.y]),
    curve: c.data.datasets[1].data.map((p) => [p.x, p.y]),
  };
}"""


#: Where the event markers are drawn on the canvas (CSS pixels).
MARKERS = """() => Chart.getChart(document.getElementById("strength-chart"))
  .getDatasetMeta(0).data.map((p) => [p.x, p.y])"""

#: The tooltip's lines once it shows event i.
TOOLTIP = """(i) => {
  const t = Chart.getChart(document.getElementById("strength-chart")).tooltip;
  const on = t.dataPoints || [];
  const lines = (t.body || []).flatMap((b) => b.lines);
  return t.opacity > 0 && on.some((p) => p.datasetIndex === 0 && p.dataIndex === i) ? lines : null;
}"""


def chart_of(page: Page, as_of: str = "now") -> dict[str, Any]:
    ready = page.locator(f'figure.chart[data-state="ready"][data-as-of="{as_of}"]')
    expect(ready).to_be_visible(timeout=20_000)
    data: dict[str, Any] = page.evaluate(CHART)
    return data


def iso(ms: float) -> str:
    """The instant the page asked the API for: JavaScript dates hold whole milliseconds."""
    return datetime.fromtimestamp(math.floor(ms) / 1000, UTC).isoformat()


def test_chart_matches_the_api_and_explains_each_event(
    watched: Page, network: Network, shots: Path
) -> None:
    """One load of the busiest relationship, then each property of its chart in turn."""
    page = watched
    page.set_viewport_size({"width": 1280, "height": 1000})
    a, b = network.busiest_pair()
    sign_in(page, network)
    page.goto(network.app_url + f"#/rel/{a}/{b}")
    chart = chart_of(page)
    timeline = network.get(f"/relationships/{a}/{b}/timeline")
    score = network.get(f"/relationships/{a}/{b}")["score"]
    screenshot(page, shots, "relationship")

    points_are_the_timeline(page, chart, timeline, score)
    decay_is_the_model(network, a, b, chart)
    keyboard_walks_the_events(page, chart)
    hover_explains_an_event(page, chart, timeline)
    screenshot(page, shots, "relationship-top", full_page=False)


def points_are_the_timeline(
    page: Page, chart: dict[str, Any], timeline: dict[str, Any], score: float
) -> None:
    """One marker per event at its strength_after; the line ends at the API's score."""
    assert len(timeline["events"]) >= 10
    assert [y for _, y in chart["events"]] == [e["strength_after"] for e in timeline["events"]]
    # The line ends at the score now (decay of a few seconds since the page read it aside).
    assert chart["curve"][-1][1] == pytest.approx(score, abs=1e-3)
    expect(page.locator("#score")).to_have_text(f"{score:.1f}")
    rows = page.locator("section[aria-labelledby=timeline-h] tbody tr")
    expect(rows).to_have_count(len(timeline["events"]) + len(timeline["retracted"]))


def decay_is_the_model(network: Network, a: str, b: str, chart: dict[str, Any]) -> None:
    """Between events the line falls, and its points are the API's model at those instants."""
    event_x = sorted({x for x, _ in chart["events"]})
    between = [(x, y) for x, y in chart["curve"] if x not in event_x]
    assert len(between) >= 20, "the decay between events is drawn"
    # No rise without events: inside each gap the line only falls.
    for lo, hi in zip(event_x, [*event_x[1:], float("inf")], strict=True):
        ys = [y for x, y in chart["curve"] if lo <= x < hi]
        assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(ys))
    for x, y in between[:: max(len(between) // 4, 1)]:
        at = network.get(f"/relationships/{a}/{b}", as_of=iso(x))
        assert at["score"] == pytest.approx(y, abs=1e-9)


def keyboard_walks_the_events(page: Page, chart: dict[str, Any]) -> None:
    n = len(chart["events"])
    canvas = page.locator("#strength-chart")
    canvas.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#announcer")).to_contain_text(f"Event 1 of {n}")
    page.keyboard.press("End")
    expect(page.locator("#announcer")).to_contain_text(f"Event {n} of {n}")
    assert f"{n} events" in (canvas.get_attribute("aria-label") or "")


def hover_explains_an_event(page: Page, chart: dict[str, Any], timeline: dict[str, Any]) -> None:
    """Hovering an event's marker shows what it was: its reason and contribution."""
    page.evaluate("() => window.scrollTo(0, 0)")
    canvas = page.locator("#strength-chart")
    canvas.blur()
    xy = page.evaluate(MARKERS)
    # The marker farthest from its neighbours (events minutes apart share a pixel); not the
    # last one, where the keyboard left the tooltip.
    gaps = [min(xy[i][0] - xy[i - 1][0], xy[i + 1][0] - xy[i][0]) for i in range(1, len(xy) - 1)]
    i = 1 + gaps.index(max(gaps))
    canvas.hover(position={"x": xy[i][0], "y": xy[i][1]})
    lines = page.wait_for_function(TOOLTIP, arg=i).json_value()
    shown = timeline["events"][i]
    assert shown["reason"] in lines
    assert f"contribution: +{shown['contribution']:.2f} points" in lines


def test_as_of_date_redraws_everything_as_of_that_day(
    watched: Page, network: Network, shots: Path
) -> None:
    page = watched
    a, b = network.busiest_pair()
    events = network.get(f"/relationships/{a}/{b}/timeline")["events"]
    middle = events[len(events) // 2]["occurred_at"][:10]
    sign_in(page, network)
    page.goto(network.app_url + f"#/rel/{a}/{b}")
    chart_of(page)
    now_score = page.locator("#score").text_content()

    page.get_by_label("As of").fill(middle)
    chart = chart_of(page, as_of=middle)
    as_of = f"{middle}T23:59:59Z"
    then = network.get(f"/relationships/{a}/{b}", as_of=as_of)
    timeline = network.get(f"/relationships/{a}/{b}/timeline", as_of=as_of)
    assert len(chart["events"]) == len(timeline["events"]) < len(events)
    assert chart["curve"][-1][1] == then["score"]
    expect(page.locator("#score")).to_have_text(f"{then['score']:.1f}")
    assert page.locator("#score").text_content() != now_score
    assert "as_of=" + middle in page.url
    screenshot(page, shots, "relationship-as-of")

    page.get_by_role("button", name="Now").click()
    chart_of(page)
    expect(page.locator("#score")).to_have_text(now_score or "")


def test_as_of_date_typed_digit_by_digit_moves_the_page_once(
    watched: Page, network: Network
) -> None:
    """Typing a date fires "change" at each digit of its year (0002, 0020, 0202, ...); the page
    moves only once the year is whole, so the rest of what is typed is not lost."""
    page = watched
    a, b = network.busiest_pair()
    events = network.get(f"/relationships/{a}/{b}/timeline")["events"]
    day = events[len(events) // 3]["occurred_at"][:10]
    year, month, date = day.split("-")
    sign_in(page, network)
    page.goto(network.app_url + f"#/rel/{a}/{b}")
    chart_of(page)
    field = page.get_by_label("As of")
    field.click()
    assert page.evaluate("() => navigator.language").startswith("en-US")
    page.keyboard.type(month + date + year)  # en-US: mm/dd/yyyy, one digit at a time
    chart_of(page, as_of=day)
    assert "as_of=" + day in page.url
    expect(page.get_by_label("As of")).to_have_value(day)
