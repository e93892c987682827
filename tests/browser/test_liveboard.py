"""The liveboard example in a real browser (headless Chromium driven by Playwright).

Page hooks used (example/liveboard/templates/liveboard/index.html): ``#state``, the
connection indicator ("connecting…", "connected", "offline", "reconnecting…"),
``#items tbody tr[data-pk]`` with ``td.name``, ``td.value``, ``td.status``;
``#open-items tbody tr[data-pk]`` (the rows whose status is "open"); ``#errors li``;
``button.plus[data-pk]`` and ``button.toggle[data-pk]`` (only on rows the user may change);
``form#create``; ``window.pgbinding.client`` (the page's client).

Every test makes its own item with SQL, so the tests do not depend on one another (except
that the restart test, last, restarts the demo). Screenshots go to ``.test-artifacts/``.
"""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import ARTIFACTS, Demo

# Imported lazily by the fixtures too; the conftest skips (or fails on CI) without it.
expect: Any
try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the fixtures skip first
    expect = None


def row(page: Any, pk: int, table: str = "items") -> Any:
    return page.locator(f"#{table} tbody tr[data-pk='{pk}']")


def button(page: Any, kind: str, pk: int) -> Any:
    return page.locator(f"button.{kind}[data-pk='{pk}']").first


def expect_live(page: Any, timeout: float = 10_000) -> None:
    expect(page.locator("#state")).to_have_text("connected", timeout=timeout)


def db_value(demo: Demo, pk: int) -> tuple[int, str]:
    [(value, status)] = demo.sql("SELECT value, status FROM liveboard_item WHERE id = %s", (pk,))
    return value, status


def test_plus_one_in_one_page_shows_in_another(demo: Demo, open_page: Any) -> None:
    pk = demo.new_item("Two pages", 5)
    first, second = open_page("demo"), open_page("demo")
    for page in (first, second):
        expect_live(page)
        expect(row(page, pk).locator("td.name")).to_have_text("Two pages")
        expect(row(page, pk).locator("td.value")).to_have_text("5")

    button(first, "plus", pk).click()
    expect(row(second, pk).locator("td.value")).to_have_text("6")
    expect(row(first, pk).locator("td.value")).to_have_text("6")
    button(second, "plus", pk).click()
    expect(row(first, pk).locator("td.value")).to_have_text("7")
    expect(row(second, pk).locator("td.value")).to_have_text("7")
    assert db_value(demo, pk) == (7, "open")
    expect(first.locator("#errors li")).to_have_count(0)


def test_outside_sql_update_appears(demo: Demo, open_page: Any) -> None:
    pk = demo.new_item("Outside SQL", 40)
    page = open_page("demo")
    expect_live(page)
    expect(row(page, pk).locator("td.value")).to_have_text("40")

    demo.sql("UPDATE liveboard_item SET value = value + 1")  # what the demo prints for psql

    rows = demo.sql("SELECT id, value FROM liveboard_item ORDER BY id")
    assert (pk, 41) in rows
    expect(page.locator("#items tbody tr[data-pk]")).to_have_count(len(rows))
    for item_pk, value in rows:
        expect(row(page, item_pk).locator("td.value")).to_have_text(str(value))


def test_filtered_view_follows_status(demo: Demo, open_page: Any) -> None:
    pk = demo.new_item("Filtered", 1)
    page = open_page("demo")
    expect_live(page)
    expect(row(page, pk, "open-items")).to_have_count(1)
    expect(row(page, pk).locator("td.status")).to_have_text("open")

    button(page, "toggle", pk).click()
    expect(row(page, pk).locator("td.status")).to_have_text("done")
    expect(row(page, pk, "open-items")).to_have_count(0)
    assert db_value(demo, pk) == (1, "done")
    # Every row left in the filtered view is an open one.
    open_pks = {
        int(pk_)
        for pk_ in page.locator("#open-items tbody tr[data-pk]").evaluate_all(
            "rows => rows.map(r => r.dataset.pk)"
        )
    }
    assert open_pks == {
        p for (p,) in demo.sql("SELECT id FROM liveboard_item WHERE status = 'open'")
    }

    button(page, "toggle", pk).click()
    expect(row(page, pk).locator("td.status")).to_have_text("open")
    expect(row(page, pk, "open-items")).to_have_count(1)
    expect(row(page, pk, "open-items").locator("td.name")).to_have_text("Filtered")
    assert db_value(demo, pk) == (1, "open")


def test_no_buttons_on_items_of_others_and_the_server_refuses_them(
    demo: Demo, open_page: Any
) -> None:
    theirs = demo.new_item("Not yours", 2, owner="demo")
    mine = demo.new_item("Yours", 5, owner="other")
    page = open_page("other")
    expect_live(page)
    expect(row(page, theirs).locator("td.value")).to_have_text("2")
    # Buttons only where a write can work (bindings.py: your own items, staff any) ...
    expect(row(page, theirs).locator("button")).to_have_count(0)
    expect(row(page, mine).locator("button.plus, button.toggle")).to_have_count(2)
    button(page, "plus", mine).click()
    expect(row(page, mine).locator("td.value")).to_have_text("6")

    # ... and a request the page does not offer is still refused by the server.
    refusal = page.evaluate(
        """pk => window.pgbinding.client.stream("items").update(pk, { value: 3 })
            .then(() => null, (error) => ({ status: error.status, errors: error.errors }))""",
        theirs,
    )
    assert refusal is not None and refusal["status"] == 403, refusal
    assert re.search("permission", " ".join(refusal["errors"]["__all__"]), re.I), refusal
    expect(row(page, theirs).locator("td.value")).to_have_text("2")
    assert db_value(demo, theirs) == (2, "open")
    expect(page.locator("#errors li")).to_have_count(0)


def test_reconnects_after_restart_and_shows_missed_changes(demo: Demo, open_page: Any) -> None:
    pk = demo.new_item("Across a restart", 10)
    toggled = demo.new_item("Done while down", 0)
    page = open_page("demo")
    expect_live(page)
    expect(row(page, pk).locator("td.value")).to_have_text("10")
    expect(row(page, toggled, "open-items")).to_have_count(1)

    demo.stop()  # daphne only: our Postgres keeps running
    expect(page.locator("#state")).to_have_text(re.compile(r"^(offline|reconnecting…)$"))
    page.screenshot(path=str(ARTIFACTS / "browser-restart-while-down.png"), full_page=True)

    demo.sql("UPDATE liveboard_item SET value = 11 WHERE id = %s", (pk,))
    demo.sql("UPDATE liveboard_item SET status = 'done' WHERE id = %s", (toggled,))
    added = demo.new_item("Added while down", 99)

    demo.start()  # same port
    # The client backs off between attempts; the demo takes a few seconds to come back.
    expect_live(page, timeout=30_000)
    expect(row(page, pk).locator("td.value")).to_have_text("11")
    expect(row(page, added).locator("td.value")).to_have_text("99")
    expect(row(page, toggled).locator("td.status")).to_have_text("done")
    expect(row(page, toggled, "open-items")).to_have_count(0)
    expect(row(page, added, "open-items")).to_have_count(1)

    # And live again afterwards.
    demo.sql("UPDATE liveboard_item SET value = 12 WHERE id = %s", (pk,))
    expect(row(page, pk).locator("td.value")).to_have_text("12")
