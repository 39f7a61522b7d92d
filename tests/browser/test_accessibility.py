"""Accessibility: axe-core (the npm package, vendored in tests/browser/vendor/) finds no WCAG
2.x A or AA violation on any view of the page: labels, contrast, names of controls, landmarks,
and keyboard-reachable scrolling regions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, expect

from tests.browser.conftest import Network, sign_in
from tests.browser.test_relationship_page import chart_of

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def test_no_wcag_a_or_aa_violations_on_any_view(browser: Browser, network: Network) -> None:
    # The page's CSP forbids injected scripts; the checker is injected with it bypassed.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        a, b = network.busiest_pair()
        page.goto(network.app_url + "#/signin")
        expect(page.get_by_role("heading", name="Sign in to tieline")).to_be_visible()
        found: dict[str, Any] = {"#/signin": check(page)}
        sign_in(page, network, me=a)
        for view in (
            "#/people",
            f"#/person/{a}",
            f"#/rel/{a}/{b}",
            "#/losing-touch",
            "#/introductions",
            "#/record",
        ):
            page.goto(network.app_url + view)
            page.wait_for_load_state("networkidle")
            if view.startswith("#/rel/"):
                chart_of(page)
            found[view] = check(page)
        bad = {v: r for v, r in found.items() if r}
        assert not bad, bad
    finally:
        context.close()


def check(page: Any) -> list[dict[str, Any]]:
    """axe's violations on the page as it is: rule, impact, and the first offending nodes."""
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate("(rules) => axe.run(document, rules)", RULES)
    return [
        {
            "rule": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"][:3]],
        }
        for v in result["violations"]
    ]
