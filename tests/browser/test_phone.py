"""The liveboard example on a phone-sized screen (390 x 844, a mobile viewport), signed out and
signed in: it fits the width, offers edit buttons only where a write can work, tells the
connection from an item's status, flashes every row one multi-row UPDATE changed, and no
request of the page ends in a 404 (its icon included).

Page hooks used besides those of test_liveboard.py: ``#signin-hint`` (signed out),
``td.status .badge`` (an item's status), ``tr.flash`` (a row that just changed; its CSS
animation is named ``flash``), ``link[rel=icon]``. Screenshots go to ``.test-artifacts/``
(``browser-phone-*.png``, and one per page from the fixture).
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urljoin

from tests.browser.conftest import ARTIFACTS, Demo

expect: Any
try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the fixtures skip first
    expect = None

#: An iPhone-sized screen: a mobile viewport, where a page wider than the screen is zoomed out
#: (``innerWidth`` grows) rather than scrolled, so both are checked.
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}

#: Records the rows whose ``flash`` animation starts: ``window.flashes``, "table-id:pk".
RECORD_FLASHES = """() => {
  window.flashes = [];
  document.addEventListener("animationstart", (event) => {
    const tr = event.target.closest("tr");
    if (event.animationName === "flash" && tr)
      window.flashes.push(`${tr.closest("table").id}:${tr.dataset.pk}`);
  });
}"""


def row(page: Any, pk: int, table: str = "items") -> Any:
    return page.locator(f"#{table} tbody tr[data-pk='{pk}']")


def expect_connected(page: Any) -> None:
    """The connection indicator says "connected", and does not look like an item's status."""
    state = page.locator("#state")
    expect(state).to_have_text("connected")
    expect(page.locator("#items tbody tr[data-pk]").first).to_be_visible()
    looks = page.evaluate(
        """() => {
          const style = (el) => el && getComputedStyle(el);
          const state = document.getElementById("state");
          const badge = document.querySelector("#items td.status .badge");
          return {
            stateInBadge: state.closest(".badge, td") !== null,
            stateBackground: style(state).backgroundColor,
            badgeBackground: style(badge).backgroundColor,
            statuses: [...document.querySelectorAll("td.status")].map((td) => td.textContent),
          };
        }"""
    )
    assert not looks["stateInBadge"], looks
    assert looks["stateBackground"] == "rgba(0, 0, 0, 0)", looks  # a dot and a word, no pill
    assert looks["badgeBackground"] != "rgba(0, 0, 0, 0)", looks  # statuses are badges
    assert "connected" not in looks["statuses"], looks


def assert_fits(page: Any) -> None:
    """No horizontal scrolling, and the mobile viewport was not widened to fit the page."""
    sizes = page.evaluate(
        """() => ({
          innerWidth,
          scrollWidth: document.documentElement.scrollWidth,
          bodyScrollWidth: document.body.scrollWidth,
          wider: [...document.querySelectorAll("body *")]
            .filter((el) => el.getBoundingClientRect().right > innerWidth + 0.5)
            .map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`)
            .slice(0, 10),
        })"""
    )
    assert sizes["innerWidth"] == 390, sizes
    assert sizes["scrollWidth"] <= sizes["innerWidth"], sizes
    assert sizes["bodyScrollWidth"] <= sizes["innerWidth"], sizes
    assert sizes["wider"] == [], sizes


def assert_no_404(pages: list[Any], demo: Demo, since: int, timeout: float = 10) -> None:
    """No response these pages got was a 404 (or any error), the browser's own icon requests
    included: Playwright's ``response`` events do not show those, so the demo's access log
    (from ``since``) is read too, and the icon is fetched here as well."""
    # The browser asks for each page's icon on its own, after the load: wait until it has.
    icon_requests = r'"GET /static/liveboard/favicon\.svg" 200'
    deadline = time.monotonic() + timeout
    while len(re.findall(icon_requests, demo.text[since:])) < len(pages):
        if time.monotonic() > deadline:
            raise AssertionError(f"the browser did not fetch the icon:\n{demo.text[since:]}")
        time.sleep(0.05)
    for page in pages:
        assert page.bad_responses == [], page.bad_responses
        assert [e for e in page.console_errors if "Failed to load resource" in e] == []
    server_404s = re.findall(r'"[A-Z]+ (\S+)" 404\b', demo.text[since:])
    assert server_404s == [], server_404s

    page = pages[0]
    href = page.locator("link[rel=icon]").get_attribute("href")
    icon = page.request.get(urljoin(page.url, href))
    assert icon.status == 200, icon.status
    assert icon.headers["content-type"].startswith("image/svg+xml"), icon.headers
    legacy = page.request.get(urljoin(page.url, "/favicon.ico"))  # follows the redirect
    assert legacy.status == 200 and legacy.url == icon.url, (legacy.status, legacy.url)


def test_phone_signed_out(demo: Demo, open_page: Any) -> None:
    since = len(demo.text)
    page = open_page(**PHONE)
    expect_connected(page)
    expect(page.locator("#items tbody tr[data-pk]")).to_have_count(
        len(demo.sql("SELECT id FROM liveboard_item"))
    )
    assert_fits(page)

    # Signed out: no edit buttons, no create form, a hint to sign in instead.
    expect(page.locator("button.plus, button.toggle")).to_have_count(0)
    expect(page.locator("#items button")).to_have_count(0)
    expect(page.locator("form#create")).to_have_count(0)
    hint = page.locator("#signin-hint a")
    expect(hint).to_be_visible()
    expect(hint).to_have_attribute("href", re.compile(r"^/accounts/login/"))

    page.screenshot(path=str(ARTIFACTS / "browser-phone-signed-out.png"), full_page=True)
    assert_no_404([page], demo, since)


def test_phone_signed_in_buttons_and_every_updated_row_flashes(demo: Demo, open_page: Any) -> None:
    changed = [
        demo.new_item("Phone: mine", 1, owner="demo"),
        demo.new_item("Phone: mine too, with a name long enough to wrap on a phone", 2),
        demo.new_item("Phone: someone else's", 3, owner="other"),
        demo.new_item("Phone: nobody's", 4, owner=None),
    ]
    untouched = demo.new_item("Phone: untouched", 5, owner="demo")

    since = len(demo.text)
    signed_in = open_page("demo", **PHONE)
    signed_out = open_page(**PHONE)
    pages = (signed_in, signed_out)
    for page in pages:
        expect_connected(page)
        for pk in [*changed, untouched]:
            expect(row(page, pk).locator("td.value")).to_be_visible()
        assert_fits(page)

    # Buttons exactly on the rows demo may change (its own: demo is not staff), on no
    # other; and none at all signed out.
    owners = dict(
        demo.sql(
            "SELECT i.id, u.username FROM liveboard_item i"
            " LEFT JOIN auth_user u ON u.id = i.owner_id"
        )
    )
    expect(signed_in.locator("#items tbody tr[data-pk]")).to_have_count(len(owners))
    for pk, owner in owners.items():
        count = 1 if owner == "demo" else 0
        expect(row(signed_in, pk).locator("button.plus")).to_have_count(count)
        expect(row(signed_in, pk).locator("button.toggle")).to_have_count(count)
    expect(signed_in.locator("form#create")).to_have_count(1)
    expect(signed_out.locator("#items button")).to_have_count(0)

    # One statement from outside Django changes several rows: each of them flashes, in
    # both tables (they are all open), on both pages; the row it left alone does not.
    values = dict(demo.sql("SELECT id, value FROM liveboard_item"))
    for page in pages:
        page.evaluate(RECORD_FLASHES)
    demo.sql("UPDATE liveboard_item SET value = value + 10 WHERE id = ANY(%s)", (changed,))
    for page in pages:
        for pk in changed:
            for table in ("items", "open-items"):
                expect(row(page, pk, table).locator("td.value")).to_have_text(str(values[pk] + 10))
                expect(row(page, pk, table)).to_have_class(re.compile(r"\bflash\b"))
    signed_in.screenshot(path=str(ARTIFACTS / "browser-phone-signed-in-flash.png"), full_page=True)
    signed_out.screenshot(
        path=str(ARTIFACTS / "browser-phone-signed-out-flash.png"), full_page=True
    )
    for page in pages:
        flashes = page.evaluate("() => window.flashes")
        for pk in changed:
            for table in ("items", "open-items"):
                assert f"{table}:{pk}" in flashes, (pk, table, flashes)
        assert f"items:{untouched}" not in flashes, flashes
        assert f"open-items:{untouched}" not in flashes, flashes
        expect(row(page, untouched).locator("td.value")).to_have_text(str(values[untouched]))
        assert_fits(page)  # the long name wraps; the page still fits

    assert_no_404(list(pages), demo, since)
