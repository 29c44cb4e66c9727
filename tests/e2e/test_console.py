"""The web console (/ui/) and the offline API reference (/docs) in a real browser: Playwright for Python driving
Debian's chromium (installed by ``make tools-browser``) against Switchyard started here on a real nats-server.

What a person sees is checked, not just what the API answers: a request that falls back once appears in the
live list without a reload, its page shows the failed and the successful attempt with their costs, a budget
bar moves after spending, a viewer gets no admin controls, another tenant sees none of the first tenant's
requests, an admin creates a key that is shown once, an operator forces a breaker, and /docs renders with every
request to anything but this gateway blocked.

Screenshots are kept as test artefacts (``$SWITCHYARD_ARTEFACTS`` or a pytest temporary folder, printed at the
end); with ``SWITCHYARD_SCREENSHOTS=docs/images`` they are also written there, for the manual and the README.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright

from shared.natsd import NatsServer
from tests.support.api import sdk, wait_trace
from tests.support.system import ADMIN_KEY, MEMBER_KEY, OTHER_TENANT_KEY, make_settings, start_system

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 900}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
WAIT_MS = 15_000  # a live page polls every 2 s; a loaded CI machine gets room beyond that


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats-console")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def system(nats, tmp_path_factory):
    """All targets in this process, with the test catalog: ``resilient`` is flaky-1 (always 503) then mock-1."""
    running = await start_system(make_settings(nats, tmp_path_factory.mktemp("data-console")))
    yield running
    await running.close()


@pytest.fixture(scope="module")
async def browser():
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is not installed: run `make tools-browser`"
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture(scope="module")
def shoot(tmp_path_factory):
    """Save a screenshot as a test artefact, and into $SWITCHYARD_SCREENSHOTS when set."""
    artefacts = Path(os.environ.get("SWITCHYARD_ARTEFACTS") or tmp_path_factory.mktemp("console-artefacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    docs = os.environ.get("SWITCHYARD_SCREENSHOTS")

    async def save(page: Page, name: str, full_page: bool = False, mask: list | None = None) -> Path:
        path = artefacts / f"console-{name}.png"
        await page.screenshot(path=str(path), full_page=full_page, mask=mask or [], mask_color="#cbd5e1")
        if docs:
            Path(docs).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(docs) / path.name)
        return path

    yield save
    print(f"\nconsole screenshots: {artefacts}")


async def signed_in(browser: Browser, system, key: str) -> Page:
    """A fresh browser context signed in to the console with ``key``; page errors fail the test at its end."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))  # type: ignore[attr-defined]
    await page.goto(system.base_url + "/ui/")
    await page.fill("#api-key", key)
    await page.click("#sign-in")
    await page.wait_for_selector("#who-role")
    return page


async def done(page: Page) -> None:
    assert page.errors == [], page.errors  # type: ignore[attr-defined]
    await page.context.close()


def usd(text: str) -> float:
    return float(text.strip().lstrip("$"))


async def chat(system, model: str, key: str = ADMIN_KEY, content: str = "hello") -> str:
    raw = await sdk(system, key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}])
    return raw.headers["x-request-id"]


async def test_sign_in_keeps_the_key_in_session_storage_only(browser, system):
    page = await signed_in(browser, system, MEMBER_KEY)
    assert await page.inner_text("#who-role") == "member"
    pages = await page.locator("nav a").evaluate_all("els => els.map(e => e.dataset.page)")
    assert pages == ["overview", "requests", "providers", "jobs", "audit"]  # no budgets, no admin for a member
    assert MEMBER_KEY not in page.url
    assert await page.evaluate("sessionStorage.getItem('switchyard.key')") == MEMBER_KEY
    assert await page.evaluate("localStorage.length") == 0
    await page.click("#sign-out")
    await page.wait_for_selector("#api-key")
    assert await page.evaluate("sessionStorage.getItem('switchyard.key')") is None
    await page.fill("#api-key", "sk-not-a-key")
    await page.click("#sign-in")
    await page.wait_for_selector(".problem")
    assert "not accepted" in await page.inner_text(".problem")
    await done(page)


async def test_a_fallback_appears_live_and_its_page_shows_both_attempts_with_costs(browser, system, shoot):
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.goto(system.base_url + "/ui/#/requests")
    await page.wait_for_selector("#request-list table")
    await page.evaluate("window.sameDocument = true")  # gone if the page reloads

    rid = await chat(system, "resilient", content="Reach me at jane.doe@example.com about the invoice.")
    row = page.locator(f'#request-list tr[data-request-id="{rid}"][data-outcome="succeeded"]')
    await row.wait_for(timeout=WAIT_MS)
    assert await page.evaluate("window.sameDocument === true"), "the list reloaded the page"
    chain = await row.locator(".chain").inner_text()
    assert "flaky-1 failed" in chain and "mock-1 success" in chain, chain
    await shoot(page, "requests")
    # Filters ask the API again: not among the failed requests, still among the degraded ones.
    await page.select_option('#page select[name="outcome"]', "failed")
    await row.wait_for(state="detached", timeout=WAIT_MS)
    await page.select_option('#page select[name="outcome"]', "")
    await page.select_option('#page select[name="degraded"]', "true")
    await row.wait_for(timeout=WAIT_MS)

    await row.locator("a").click()
    await page.wait_for_selector('tr.attempt[data-outcome="success"]', timeout=WAIT_MS)
    trace = await wait_trace(system, rid, status="succeeded")
    failed, succeeded = trace["attempts"]
    assert (failed["outcome"], succeeded["outcome"]) == ("failed", "success")
    failed_cost = await page.inner_text('tr.attempt[data-outcome="failed"] .attempt-cost')
    success_cost = await page.inner_text('tr.attempt[data-outcome="success"] .attempt-cost')
    assert usd(failed_cost) == failed["cost_usd"] == 0
    assert succeeded["cost_usd"] > 0 and usd(success_cost) == pytest.approx(succeeded["cost_usd"], rel=0.05)
    assert "upstream_unavailable" in await page.inner_text('tr.attempt[data-outcome="failed"]')
    # The routing explanation lists every candidate; admission shows the PII kind and count, never the value.
    assert await page.locator("tr.candidate").count() == len(trace["routing"]["candidates"]) == 2
    detail = await page.inner_text("#request-detail")
    assert "EMAIL × 1" in detail and "jane.doe" not in detail
    await shoot(page, "request-detail", full_page=True)

    await page.click('a[data-page="audit"]')  # the audit trail has policy's decision, by request id
    await page.fill('#page input[name="request_id"]', rid)
    await page.click('#page form button[type="submit"]')
    await page.wait_for_selector(f'#audit-list tr[data-type="admitted"][data-request-id="{rid}"]', timeout=WAIT_MS)
    assert "EMAIL" in await page.inner_text(f'#audit-list tr[data-type="admitted"][data-request-id="{rid}"]')
    await done(page)


async def test_the_budget_bar_moves_after_spending(browser, system, shoot):
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.click('a[data-page="admin"]')  # the team's limits, set in the Admin page's team settings
    settings = 'form.team-settings[data-team="team-a"]'
    await page.fill(f'{settings} input[name="daily_budget_usd"]', "0.001")
    await page.fill(f'{settings} input[name="monthly_budget_usd"]', "0.01")
    await page.click(f'{settings} button[type="submit"]')
    await page.wait_for_selector("#admin-note:has-text('Settings of team-a saved')", timeout=WAIT_MS)
    team = (await system.http.get("/v1/admin/teams/team-a")).json()
    assert team["settings"]["daily_budget_usd"] == 0.001 and team["settings"]["monthly_budget_usd"] == 0.01
    await page.click('a[data-page="budgets"]')
    bar = '.card[data-team="team-a"] [role=progressbar][aria-label="Daily"]'
    await page.wait_for_selector(f'{bar}[data-limit="0.001"]', timeout=WAIT_MS)
    before = float(await page.get_attribute(bar, "aria-valuenow"))
    width_before = await page.eval_on_selector(f"{bar} .fill", "el => parseFloat(el.style.width)")

    for _ in range(4):
        await chat(system, "mock-1", key=MEMBER_KEY)
    await page.wait_for_function(
        "([sel, before]) => Number(document.querySelector(sel)?.getAttribute('aria-valuenow')) > before",
        arg=[bar, before], timeout=WAIT_MS)
    assert await page.eval_on_selector(f"{bar} .fill", "el => parseFloat(el.style.width)") > width_before
    await page.click('a[data-page="requests"]')  # back again: the charts load afresh, with this spend in them
    await page.click('a[data-page="budgets"]')
    await page.wait_for_selector(f'{bar}[aria-valuenow]:not([aria-valuenow="{before}"])', timeout=WAIT_MS)
    await page.wait_for_selector("svg.chart polyline", timeout=WAIT_MS)
    await shoot(page, "budgets", full_page=True)

    await page.click('a[data-page="overview"]')
    await page.wait_for_function(
        "() => /\\$0\\.0/.test(document.querySelector('#tile-spend .tile-value')?.textContent || '')",
        timeout=WAIT_MS)
    counted = await page.inner_text("#tile-rate .tile-sub")  # "N in the last hour"
    await chat(system, "mock-1")
    await page.wait_for_function("before => document.querySelector('#tile-rate .tile-sub').textContent !== before",
                                 arg=counted, timeout=WAIT_MS)  # the overview follows without a reload
    await shoot(page, "overview")
    await done(page)


async def test_every_team_setting_can_be_set_and_given_back_to_the_default(browser, system):
    r = await system.http.post("/v1/admin/teams", json={"name": "console-settings"})
    assert r.status_code == 201, r.text
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.click('a[data-page="admin"]')
    form = 'form.team-settings[data-team="console-settings"]'
    await page.wait_for_selector(form, timeout=WAIT_MS)
    await page.select_option(f'{form} select[name="data_class"]', "confidential")
    await page.select_option(f'{form} select[name="cache_mode"]', "exact")
    await page.select_option(f'{form} select[name="store_text"]', "false")
    await page.fill(f'{form} input[name="allowed_models"]', "mock-1, mock-embed-1")
    await page.fill(f'{form} input[name="alert_thresholds"]', "0.5, 0.9")
    await page.fill(f'{form} input[name="rpm"]', "30")
    await page.click(f'{form} button[type="submit"]')
    await page.wait_for_selector("#admin-note:has-text('Settings of console-settings saved')", timeout=WAIT_MS)
    settings = (await system.http.get("/v1/admin/teams/console-settings")).json()["settings"]
    assert settings == {**settings, "data_class": "confidential", "cache_mode": "exact", "store_text": False,
                        "allowed_models": ["mock-1", "mock-embed-1"], "alert_thresholds": [0.5, 0.9], "rpm": 30}
    # The form shows what is stored; "default" gives a setting back to the policy's default.
    await page.wait_for_function(
        "sel => document.querySelector(sel + ' select[name=\"data_class\"]').value === 'confidential'",
        arg=form, timeout=WAIT_MS)
    await page.select_option(f'{form} select[name="data_class"]', "")
    await page.click(f'{form} button[type="submit"]')
    await page.wait_for_function(
        "sel => document.querySelector(sel + ' select[name=\"data_class\"]').value === ''", arg=form,
        timeout=WAIT_MS)
    settings = (await system.http.get("/v1/admin/teams/console-settings")).json()["settings"]
    assert "data_class" not in settings and settings["cache_mode"] == "exact"
    await done(page)


async def test_a_viewer_gets_no_admin_controls(browser, system):
    r = await system.http.post("/v1/admin/keys", json={"team": "team-a", "role": "viewer", "name": "console viewer"})
    assert r.status_code == 201, r.text
    page = await signed_in(browser, system, r.json()["key"])
    assert await page.inner_text("#who-role") == "viewer"
    pages = await page.locator("nav a").evaluate_all("els => els.map(e => e.dataset.page)")
    assert "admin" not in pages and "budgets" in pages and "requests" in pages
    await page.goto(system.base_url + "/ui/#/admin")  # asked for by hand: the overview instead
    await page.wait_for_selector("#tile-rate", timeout=WAIT_MS)
    assert page.url.endswith("#/overview") and await page.locator("#create-key").count() == 0
    await page.goto(system.base_url + "/ui/#/providers")
    await page.wait_for_selector("#provider-list tr[data-deployment]", timeout=WAIT_MS)
    assert await page.locator("[data-action]").count() == 0  # no breaker switches
    await page.goto(system.base_url + "/ui/#/budgets")
    await page.wait_for_selector("#budget-cards .card", timeout=WAIT_MS)
    teams = await page.locator("#budget-cards .card").evaluate_all("els => els.map(e => e.dataset.team)")
    assert teams == ["team-a"]  # its own team only
    await done(page)


async def test_another_tenant_sees_none_of_the_first_tenants_requests(browser, system):
    first = await chat(system, "mock-1")  # tenant "default"
    await wait_trace(system, first, status="succeeded")
    page = await signed_in(browser, system, OTHER_TENANT_KEY)
    await page.goto(system.base_url + "/ui/#/requests")
    await page.wait_for_selector("#request-list table")
    own = await chat(system, "mock-1", key=OTHER_TENANT_KEY)
    await page.wait_for_selector(f'#request-list tr[data-request-id="{own}"]', timeout=WAIT_MS)
    shown = await page.locator("#request-list tr[data-request-id]").evaluate_all(
        "els => els.map(e => e.dataset.requestId)")
    assert shown == [own]
    await page.goto(system.base_url + f"/ui/#/requests/{first}")
    await page.wait_for_selector("#request-detail .problem", timeout=WAIT_MS)
    assert "No such request" in await page.inner_text("#request-detail")
    await done(page)


async def test_an_admin_creates_a_key_shown_once_and_revokes_it(browser, system, shoot):
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.click('a[data-page="admin"]')
    await page.wait_for_selector('#create-key select[name="team"] option[value="team-a"]', state="attached",
                                 timeout=WAIT_MS)
    await page.select_option('#create-key select[name="team"]', "team-a")
    await page.select_option('#create-key select[name="role"]', "member")
    await page.fill('#create-key input[name="name"]', "console test")
    await page.click('#create-key button[type="submit"]')
    await page.wait_for_selector("#new-key", timeout=WAIT_MS)
    key = await page.input_value("#new-key")
    assert key.startswith("sk-")
    me = await system.http.get("/v1/me", headers={"authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["team"] == "team-a"
    key_id = me.json()["key_id"]
    await shoot(page, "admin", full_page=True, mask=[page.locator("#new-key")])  # a key is no picture's business

    await page.reload()  # shown once: after a reload only its prefix and last characters are anywhere
    await page.wait_for_selector(f'tr[data-key-id="{key_id}"]', timeout=WAIT_MS)
    assert key not in await page.content()
    revoke = page.locator(f'tr[data-key-id="{key_id}"] [data-action="revoke"]')
    await revoke.click()
    await revoke.click()  # the second click confirms
    await page.wait_for_selector(f'tr[data-key-id="{key_id}"] .badge.bad', timeout=WAIT_MS)
    gone = await system.http.get("/v1/me", headers={"authorization": f"Bearer {key}"})
    assert gone.status_code == 401
    await done(page)


async def test_a_hostile_key_name_is_shown_as_text_and_the_key_rotates(browser, system):
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    made = await system.http.post("/v1/admin/keys", json={"team": "team-a", "role": "viewer", "name": hostile})
    assert made.status_code == 201, made.text
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.click('a[data-page="admin"]')
    row = page.locator(f'tr[data-key-id="{made.json()["id"]}"]')
    await row.wait_for(timeout=WAIT_MS)
    assert hostile in await row.inner_text()  # shown as the text it is
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#key-list img, #key-list script").count() == 0

    rotate = row.locator('[data-action="rotate"]')  # and a key is rotated: the new one shown once, the old one gone
    await rotate.click()
    await rotate.click()
    await page.wait_for_selector("#new-key", timeout=WAIT_MS)
    rotated = await system.http.get("/v1/me", headers={"authorization": f"Bearer {await page.input_value('#new-key')}"})
    assert rotated.status_code == 200 and rotated.json()["role"] == "viewer"
    old = await system.http.get("/v1/me", headers={"authorization": f"Bearer {made.json()['key']}"})
    assert old.status_code == 401
    await done(page)


async def test_an_operator_forces_a_breaker_open_and_resets_it(browser, system, shoot):
    page = await signed_in(browser, system, ADMIN_KEY)  # the configured admin key is the operator's
    await page.click('a[data-page="providers"]')
    row = '#provider-list tr[data-deployment="mock-slow/slow-1"]'
    await page.wait_for_selector(row, timeout=WAIT_MS)
    await page.click(f'{row} [data-action="force_open"]')
    await page.wait_for_selector(f'#provider-list tr[data-deployment="mock-slow/slow-1"][data-breaker="forced_open"]',
                                 timeout=WAIT_MS)
    await page.wait_for_selector('#breaker-events tr[data-breaker-action="force_open"]', timeout=WAIT_MS)
    assert "mock-slow/slow-1" in await page.inner_text("#breaker-events")  # the audit trail has the operator's act
    await shoot(page, "providers")
    await page.click(f'{row} [data-action="reset"]')
    await page.wait_for_selector(f'#provider-list tr[data-deployment="mock-slow/slow-1"][data-breaker="closed"]',
                                 timeout=WAIT_MS)
    await done(page)


async def test_a_job_is_listed_and_its_page_shows_status_and_result(browser, system):
    r = await system.http.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "job"}]})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    page = await signed_in(browser, system, ADMIN_KEY)
    await page.click('a[data-page="jobs"]')
    row = page.locator(f'#request-list tr[data-request-id="{job_id}"]')
    await row.wait_for(timeout=WAIT_MS)
    await row.locator("a").click()
    await page.wait_for_selector("#job-detail .result", timeout=WAIT_MS)
    assert "completed" in await page.inner_text("#job-detail")
    result = (await system.http.get(f"/v1/jobs/{job_id}")).json()["result"]
    assert await page.inner_text("#job-detail .result") == result["choices"][0]["message"]["content"]
    assert await page.locator("#cancel-job").count() == 0  # a finished job cannot be cancelled

    slow = await system.http.post("/v1/jobs", json={"model": "mock-1", "messages": [{"role": "user", "content": "x"}],
                                                    "switchyard": {"mock": {"latency_ms": 5000}}})
    assert slow.status_code == 202, slow.text
    await page.goto(system.base_url + f"/ui/#/jobs/{slow.json()['id']}")
    await page.click("#cancel-job", timeout=WAIT_MS)
    await page.wait_for_function("() => /cancelled/.test(document.querySelector('#job-detail').textContent)",
                                 timeout=WAIT_MS)
    assert (await system.http.get(f"/v1/jobs/{slow.json()['id']}")).json()["status"] == "cancelled"
    await done(page)


async def test_docs_render_offline_and_try_it_out_sends_the_key(browser, system):
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    outside: list[str] = []

    async def only_this_gateway(route):
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_this_gateway)
    await page.goto(system.base_url + "/docs")
    await page.wait_for_selector(".swagger-ui .info .title", timeout=WAIT_MS)
    assert "Switchyard" in await page.inner_text(".swagger-ui .info .title")
    await page.click(".btn.authorize")
    await page.fill(".modal-ux input", ADMIN_KEY)
    await page.click('.modal-ux button[type="submit"]')
    await page.click(".modal-ux button.btn-done")
    await page.click('.opblock-summary:has([data-path="/v1/me"])')
    await page.click(".try-out__btn")
    await page.click(".execute")
    answer = ".live-responses-table tbody tr.response"
    await page.wait_for_selector(answer, timeout=WAIT_MS)
    assert (await page.inner_text(f"{answer} .response-col_status")).strip() == "200"
    assert '"tenant": "default"' in await page.inner_text(f"{answer} .response-col_description")
    assert outside == [], f"/docs tried to reach beyond the gateway: {outside}"
    await context.close()


async def test_the_console_serves_no_file_outside_its_folder(system):
    """Raw paths, as a client may send them (no normalisation): each is a 404, never a file's content."""
    port = system.deps.settings.gateway.port
    for path in ("/ui/../console.py", "/ui/..%2fconsole.py", "/ui/%2e%2e/app.py", "/ui/vendor/../../console.py",
                 "/ui//etc/passwd", "/ui/%2fetc%2fpasswd", "/ui/pages/../../console.py"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"404", (path, head)
        assert b"import" not in body and b"root:" not in body, path
