"""The dashboard in a real browser (headless Debian Chromium) over the real API, broker and warehouse.

One process owns the chDB folder (DESIGN.md), so the processors, the API
(uvicorn in a thread) and the training runs all live in this test process;
the browser is the only other party, and it sees what a user would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from api.app import create_app
from api.deps import SESSION_COOKIE, SESSION_MAX_AGE_S
from dataset.snapshot import DatasetRequest, create_dataset
from dataset.split import Split
from deploy.kafka_admin import ensure_topics_async
from deploy.settings import Settings
from devtools.generator import generate_events
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from tests.integration.browser import (
    chromium,
    console_errors,
    get_json,
    requested,
    require_chromium,
    screenshot,
    serving,
    wait_until,
)
from tests.integration.support import (
    expected_outcome,
    kafka_of,
    publish,
    running_processors,
)
from tests.integration.test_api_datasets_runs import metrics, run_event, send
from trainer.config import ConfigError
from trainer.run import run_training
from warehouse.client import Warehouse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

CODEC = AvroCodec(default_registry())
DONE_STEPS, LIVE_STEPS = 20, 100

CHART_POINTS = """
const div = document.getElementById(arguments[0]);
return (div && div.data ? div.data : []).map(t => ({
  name: t.name || null, x: Array.from(t.x || []), y: Array.from(t.y || []),
  base: t.base ? Array.from(t.base) : null, customdata: t.customdata ? Array.from(t.customdata) : null,
}));
"""
TRACE_VIEW = """
return {
  trace_id: document.querySelector('#trace-view h3')?.dataset.trace || null,
  steps: Array.from(document.querySelectorAll('#trace-view ol.steps li')).map(li => [
    Number(li.querySelector('.step-i').textContent), li.querySelector('.step-type').textContent,
    li.querySelector('.step-content').textContent]),
};
"""


@pytest.fixture
def browser(tmp_path: Path):
    require_chromium()
    with chromium(tmp_path / "chromium") as driver:
        yield driver


class Page:
    """The dashboard in the browser; every call runs off the event loop so the processors keep going."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn, *args) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def script(self, script: str, *args) -> Any:
        return await self.call(self.driver.execute_script, script, *args)

    async def open_trace(self, trace_id: str) -> None:
        def type_and_submit() -> None:
            box = self.driver.find_element(By.ID, "trace-id")
            box.clear()
            # Enter submits the form as a user would; a click can land on a panel that the live
            # page has just grown over the button.
            box.send_keys(trace_id, Keys.ENTER)

        await self.call(type_and_submit)

    async def chart(self, div_id: str) -> list[dict]:
        return await self.script(CHART_POINTS, div_id)

    async def wait(self, what: str, predicate, *, timeout_s: float = 30) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout_s
        last = None
        while asyncio.get_running_loop().time() < deadline:
            last = await predicate()
            if last:
                return last
            await asyncio.sleep(0.25)
        shot = await self.call(screenshot, self.driver, "dashboard-timeout.png")
        state = await self.script(
            "return ['#runs-table tbody', '#run-live', '#scorecard', '.panel .empty:not([hidden])']"
            ".map(s => Array.from(document.querySelectorAll(s)).map(e => e.innerText).join(' | '))")
        console = await self.call(self.driver.get_log, "browser")
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last saw {last!r}; "
                             f"page: {state}; console: {console}; screenshot: {shot}")


@pytest.mark.asyncio
async def test_dashboard_shows_every_panel_with_data_and_follows_a_live_run(
    settings: Settings, tmp_path: Path, browser
):
    events = list(generate_events(400, seed=23, broken_share=0.1))
    valid, reasons = expected_outcome(events)
    published = {e.trace_id: e.record for e in events if e.expected_reason is None}

    async with running_processors(settings):
        await ensure_topics_async(kafka_of(settings), {settings.topics.runs: 1, settings.topics.datasets: 1})
        await publish(settings, events)
        await asyncio.wait_for(wait_until_caught_up(settings, kafka_of(settings)), 120)
        manifest = await create_dataset(
            settings, kafka_of(settings), DatasetRequest("dash", split=Split(eval_share=0.2)), CODEC
        )
        with pytest.raises(ConfigError):  # a run that fails at once, before the one that trains
            await run_training(settings, kafka_of(settings), "dash", None, {"train": {"total_step": 5}},
                               run_id="run-bad", workdir=tmp_path / "run-bad")
        done = await run_training(settings, kafka_of(settings), "dash", None,
                                  {"preset": "tiny", "train": {"total_steps": DONE_STEPS}},
                                  run_id="run-done", workdir=tmp_path / "run-done")
        await asyncio.wait_for(wait_until_caught_up(settings, kafka_of(settings)), 120)

        app = create_app(settings, warehouse=Warehouse.connect(settings))
        with serving(app) as base:
            page = Page(browser)
            await page.call(browser.get, base + "/")
            assert browser.current_url == base + "/dashboard"

            # Ingest: the per-minute bars account for every materialized trace.
            ingest = await page.wait("the ingest chart", lambda: page.chart("chart-ingest"))
            assert sum(ingest[0]["y"]) == valid, ingest

            # Dead letters: one bar per reason, with the counts the generator broke events for.
            dlq = await page.wait("the DLQ chart", lambda: page.chart("chart-dlq"))
            assert Counter(dict(zip(dlq[0]["y"], dlq[0]["x"]))) == reasons

            # Datasets: one bar per partition from the manifest's start to its end offset.
            datasets = await page.wait("the datasets chart", lambda: page.chart("chart-datasets"))
            (bars,) = [t for t in datasets if t["name"] == f"dash@{manifest.version}"]
            shown = {(y, base_, base_ + width) for y, base_, width in zip(bars["y"], bars["base"], bars["x"])}
            assert shown == {(f"dash@{manifest.version} p{r.partition}", r.start, r.end) for r in manifest.ranges}
            table = await page.script("return document.querySelector('#datasets-table tbody').innerText")
            assert f"{manifest.record_count:,}" in table and "ready" in table

            # The finished run: its whole loss curve, and its scorecard.
            loss = await page.wait("the finished run's loss curve",
                                   lambda: _points_if(page, "chart-loss", DONE_STEPS))
            assert loss["x"] == list(range(1, DONE_STEPS + 1))
            assert loss["y"][-1] == pytest.approx(done.final_loss)
            card = await page.script("return document.getElementById('scorecard').innerText")
            assert f"{done.scorecard['items']}" in card and "exact match" in card

            # The failed run, picked by hand, says why it failed; following the latest run then resumes.
            await page.script("document.querySelector(`#runs-table tr[data-run='run-bad']`).click()")
            failed = await page.wait("the failed run's error", lambda: page.script(
                "const live = document.getElementById('run-live').textContent;"
                "return live.startsWith('failed') && live"))
            assert "total_step" in failed
            assert await page.script("return document.getElementById('follow-latest').checked") is False
            await page.script("document.getElementById('follow-latest').click()")

            # Trace viewer: pick a trace from the list; its steps show in index order with their types.
            rows = await page.wait("the trace list", lambda: page.script(
                "return Array.from(document.querySelectorAll('#traces-table tbody tr')).map(r => r.dataset.trace)"))
            pick = rows[min(2, len(rows) - 1)]
            await page.script("document.querySelector(`#traces-table tr[data-trace='${arguments[0]}']`).click()", pick)
            view = await page.wait("the picked trace", lambda: _view_of(page, pick))
            expected_steps = sorted(published[pick]["steps"], key=lambda s: s["i"])
            assert len(expected_steps) >= 2  # so that the order means something
            assert view["steps"] == [[s["i"], s["type"], s["content"]] for s in expected_steps]
            assert browser.current_url.endswith(f"#trace={pick}")
            assert console_errors(browser) == []

            # Paging: the next page holds other traces; one opened by id shows; an unknown id is named.
            await page.script("document.getElementById('traces-next').click()")
            second = await page.wait("the second page of traces", lambda: page.script(
                "return document.getElementById('traces-page').textContent === 'page 2' && "
                "Array.from(document.querySelectorAll('#traces-table tbody tr')).map(r => r.dataset.trace)"))
            assert second and not set(second) & set(rows)
            await page.open_trace(second[-1])
            view = await page.wait("the trace opened by id", lambda: _view_of(page, second[-1]))
            assert [s[0] for s in view["steps"]] == sorted(s["i"] for s in published[second[-1]]["steps"])
            await page.open_trace("no-such-trace")
            refused = await page.wait("the unknown trace's error", lambda: page.script(
                "return document.querySelector('#trace-view .error')?.textContent"))
            assert "404" in refused and "no-such-trace" in refused
            assert all("no-such-trace" in line and "404" in line for line in console_errors(browser))

            # A run that starts while the page is open: the page follows it and its curve grows live.
            live = asyncio.create_task(run_training(
                settings, kafka_of(settings), "dash", None,
                {"preset": "tiny", "train": {"total_steps": LIVE_STEPS}},
                run_id="run-live", workdir=tmp_path / "run-live"))
            seen_counts = set()

            async def live_points() -> Any:
                selected = await page.script(
                    "return document.querySelector('#runs-table tr.selected')?.dataset.run || null")
                (trace,) = await page.chart("chart-loss") or [{"x": []}]
                if selected == "run-live":
                    seen_counts.add(len(trace["x"]))
                return selected == "run-live" and len(trace["x"]) == LIVE_STEPS and trace

            live_loss = await page.wait("the live run's whole curve", live_points, timeout_s=180)
            outcome = await live
            assert live_loss["x"] == list(range(1, LIVE_STEPS + 1))
            assert live_loss["y"][-1] == pytest.approx(outcome.final_loss)
            # Drawn part-way before the run ended, then whole: it grew live. (How many partial states a
            # 0.25 s poll catches depends on the machine's speed: one clean-clone run saw 0, 70, 100.)
            partial = {n for n in seen_counts if 0 < n < LIVE_STEPS}
            assert partial, f"the curve did not grow while the run trained (seen: {sorted(seen_counts)})"

            await page.open_trace(pick)  # the screenshot shows a trace, not the error
            await page.wait("the picked trace again", lambda: _view_of(page, pick))
            await page.wait("the live run's scorecard", lambda: page.script(
                "return document.getElementById('scorecard-run').textContent === 'run-live' && "
                "!document.getElementById('scorecard').innerText.includes('no evaluation')"), timeout_s=60)
            assert console_errors(browser) == []
            shot = await page.call(screenshot, browser, "dashboard.png")
            assert shot.stat().st_size > 50_000

            # A link names a run and a trace: the page opens on them, the run pinned.
            await page.call(browser.get, "about:blank")
            await page.call(browser.get, f"{base}/dashboard#run=run-done&trace={second[0]}")
            await page.wait("the linked trace", lambda: _view_of(page, second[0]))
            linked = await page.wait("the linked run's curve", lambda: _points_if(page, "chart-loss", DONE_STEPS))
            assert linked["y"][-1] == pytest.approx(done.final_loss)
            await asyncio.sleep(6)  # a refresh round later it is still pinned, though run-live is newer
            assert await page.script(
                "return [document.querySelector('#runs-table tr.selected')?.dataset.run,"
                " document.getElementById('follow-latest').checked]") == ["run-done", False]
            assert console_errors(browser) == []


TOKEN = "dashboard-reads-token"
SIGN_IN_SHOWN = """return !document.getElementById('sign-in').hidden && document.getElementById('panels').hidden
  && document.getElementById('sign-out').hidden"""
TRACE_ROWS = "return Array.from(document.querySelectorAll('#traces-table tbody tr')).map(r => r.dataset.trace)"


@pytest.mark.asyncio
async def test_with_reads_behind_the_token_the_dashboard_signs_in_and_reads_with_an_httponly_cookie(
    settings: Settings, browser
):
    settings = settings.model_copy(update={"api_token": TOKEN, "api_protect_reads": True})
    events = list(generate_events(120, seed=29, broken_share=0.1))
    valid, reasons = expected_outcome(events)
    await publish(settings, events)
    producer = kafka_of(settings).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await send(producer, settings, run_event("live", "queued", 0), run_event("live", "started", 1),
                   *(metrics("live", step, 3.0 - step / 10) for step in (1, 2, 3)))
        async with running_processors(settings):
            await asyncio.wait_for(wait_until_caught_up(settings, kafka_of(settings)), 120)
            app = create_app(settings, warehouse=Warehouse.connect(settings))
            with serving(app) as base:
                page = Page(browser)
                await page.call(browser.get, base + "/dashboard")

                # Signed out: the sign-in form, and not one read of the API beyond asking whether to sign in.
                await page.wait("the sign-in form", lambda: page.script(SIGN_IN_SHOWN))
                assert await page.call(requested, browser) == ["/api/session"]
                shot = await page.call(screenshot, browser, "dashboard-sign-in.png")
                assert shot.stat().st_size > 5_000

                # A wrong token: the form says so, and nothing is set.
                await page.call(_sign_in, browser, "not-the-token")
                refused = await page.wait("the wrong token's error", lambda: page.script(
                    "const p = document.getElementById('sign-in-error'); return !p.hidden && p.textContent"))
                assert "401" in refused and "token is wrong" in refused
                assert await page.script(SIGN_IN_SHOWN)
                assert await page.call(browser.get_cookies) == []
                assert all("/api/session" in line and "401" in line for line in console_errors(browser))

                # The right token: the panels load real data, the trace list newest first, through the cookie.
                await page.call(_sign_in, browser, TOKEN)
                rows = await page.wait("the trace list", lambda: page.script(TRACE_ROWS))
                newest = (await page.call(get_json, base, "/api/traces?order=desc&limit=50", TOKEN))["items"]
                assert rows == [t["trace_id"] for t in newest]
                await page.wait("the traces tile", lambda: page.script(
                    "return document.getElementById('tile-traces').textContent === arguments[0]", f"{valid:,}"))
                dlq = await page.wait("the DLQ chart", lambda: page.chart("chart-dlq"))
                assert Counter(dict(zip(dlq[0]["y"], dlq[0]["x"]))) == reasons
                assert [p for p in await page.call(requested, browser) if p.startswith("/api/traces?")]
                assert all("order=desc" in p for p in await page.call(requested, browser)
                           if p.startswith("/api/traces?"))

                # The run's loss curve grows live: the EventSource sends the cookie (it cannot send a header).
                await page.wait("the live run's stored curve", lambda: _points_if(page, "chart-loss", 3))
                await send(producer, settings, metrics("live", 4, 2.6), metrics("live", 5, 2.5))
                live = await page.wait("the curve extended from the event stream",
                                       lambda: _points_if(page, "chart-loss", 5), timeout_s=60)
                assert live["y"] == pytest.approx([2.9, 2.8, 2.7, 2.6, 2.5])
                await send(producer, settings, run_event("live", "completed", 30))
                await page.wait("the run's end, from the stream", lambda: page.script(
                    "return document.getElementById('run-live').textContent.startsWith('completed')"), timeout_s=60)

                # The cookie: HttpOnly (no script sees it), SameSite=Strict, 12 hours, and not the token.
                assert await page.script("return document.cookie") == ""
                (cookie,) = await page.call(browser.get_cookies)
                assert cookie["name"] == SESSION_COOKIE and cookie["httpOnly"] is True
                assert cookie["sameSite"] == "Strict" and cookie["path"] == "/" and cookie["secure"] is False
                assert TOKEN not in cookie["value"]
                assert abs(cookie["expiry"] - (time.time() + SESSION_MAX_AGE_S)) < 120
                assert not await page.script("return document.getElementById('sign-out').hidden")
                assert console_errors(browser) == []  # not one 401 (nor anything else) since signing in

                # Signing out clears the cookie and shows the sign-in again, on a page that read nothing.
                await page.script("document.getElementById('sign-out').click()")
                await page.wait("the sign-in after signing out", lambda: page.script(
                    SIGN_IN_SHOWN + " && document.querySelectorAll('#traces-table tbody tr').length === 0"))
                assert await page.call(browser.get_cookies) == []
                assert await page.call(requested, browser) == ["/api/session"]
                assert console_errors(browser) == []
    finally:
        await producer.stop()


def _sign_in(driver: Any, token: str) -> None:
    box = driver.find_element(By.ID, "sign-in-token")
    box.clear()
    box.send_keys(token, Keys.ENTER)


async def _points_if(page: Page, div_id: str, count: int) -> dict | None:
    traces = await page.chart(div_id)
    return traces[0] if traces and len(traces[0]["x"]) == count else None


async def _view_of(page: Page, trace_id: str) -> dict | None:
    view = await page.script(TRACE_VIEW)
    return view if view["trace_id"] == trace_id else None


def test_an_empty_warehouse_shows_no_data_in_every_panel_without_errors(settings: Settings, browser):
    with serving(create_app(settings)) as base:
        browser.get(base + "/dashboard")
        messages = wait_until(browser, """
            const shown = Array.from(document.querySelectorAll('.panel .empty:not([hidden])'));
            const panels = document.querySelectorAll('.panel').length;
            return shown.length === panels && shown.map(p => p.closest('.panel').id + ': ' + p.textContent);
        """, timeout_s=30, what="a 'no data' line in each panel")
        assert all(": no data: " in m for m in messages), messages
        charts = browser.execute_script(
            "return Array.from(document.querySelectorAll('.chart')).map(c => (c.data || []).length)")
        assert charts == [0, 0, 0, 0, 0]  # ingest, dead letters, datasets, loss, tune
        assert console_errors(browser) == []


def test_plotly_is_served_from_the_installed_package_with_caching(settings: Settings):
    """No CDN: plotly.js comes from the plotly package, gzipped, cacheable for good, revalidated by ETag."""
    import plotly
    from plotly.offline import get_plotlyjs

    app = create_app(settings)
    with serving(app) as base:
        page = httpx.get(base + "/dashboard").text
        assert f"/dashboard/static/plotly.min.js?v={plotly.__version__}" in page
        assert "cdn" not in page.lower() and "https://" not in page
        first = httpx.get(base + "/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
        assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
        assert first.text == get_plotlyjs()  # httpx decodes the gzip
        assert "immutable" in first.headers["cache-control"]
        again = httpx.get(base + "/dashboard/static/plotly.min.js",
                          headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        missing = httpx.get(base + "/dashboard/static/nope.js")
        assert missing.status_code == 404 and "dashboard.js" in missing.json()["error"]["message"]
