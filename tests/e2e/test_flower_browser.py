"""`aidist flower` in a real browser (Debian's Chromium, driven by Playwright), as an operator
sees it: refused without credentials; with them, the session's gpu-pool and cpu-pool workers
online on the Workers page, and aidist's messages on the Tasks page under the name of what they
run, with no job input on any page. Screenshots go to $AIDIST_TEST_ARTIFACTS (else
<repo>/test-artifacts/), for a person to look at when this fails.

Playwright never downloads a browser here: the test launches the system's Chromium by path
(apt package ``chromium``); without it the test fails, like a missing service."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from pydantic import SecretStr

from aidist.config import Settings
from aidist.processes import warm_stop
from producers import Client
from tests.conftest import REPO, WorkerProcess, make_settings, wait_for
from tests.flower_process import USER, FlowerProcess, start_flower

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# No sandbox: CI runs as root. The rest keeps Chromium off the network it cannot reach anyway.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
GPU_MODEL = "toy-classifier"
CPU_OP = "tokenize"
TARGETS = {"gpu": GPU_MODEL, "cpu": CPU_OP}  # pool -> what we submit to it
DEADLINE_MS = 60_000


@dataclass
class FlowerSite:
    """The module's `aidist flower`, its credentials and the workers it should show."""

    flower: FlowerProcess
    password: str
    nodes: dict[str, str]  # pool -> Celery node name

    def url(self, path: str) -> str:
        return self.flower.url(path)


def artifacts_dir() -> Path:
    directory = Path(os.environ.get("AIDIST_TEST_ARTIFACTS") or REPO / "test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def shadow_name(target: str, *, whole: bool = True) -> re.Pattern[str]:
    """The name Flower lists a message under: what it runs and how many jobs it carries (the
    whole of a Name cell, or a part of a page's text)."""
    name = rf"{re.escape(target)} \(\d+ jobs?\)"
    return re.compile(rf"^{name}$" if whole else name)


def jobs_named(target: str, names: list[str]) -> int:
    """How many jobs the tasks named for ``target`` carry, by their names."""
    pattern = shadow_name(target)
    return sum(int(re.findall(r"\d+", name)[-1]) for name in names if pattern.match(name))


@pytest.fixture(scope="module")
def site(workers: dict[str, WorkerProcess], settings: Settings,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerSite]:
    password = f"pw-{uuid.uuid4().hex}"
    with_auth = make_settings(**{**settings.model_dump(),
                                 "flower_basic_auth": SecretStr(f"{USER}:{password}")})
    flower = start_flower(with_auth, tmp_path_factory.mktemp("flower-browser"))
    nodes = {pool: worker.node(settings) for pool, worker in workers.items()}
    yield FlowerSite(flower, password, nodes)
    assert warm_stop(flower.process, timeout=30) == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def signed_in(browser: Browser, site: FlowerSite) -> Iterator[BrowserContext]:
    context = browser.new_context(
        http_credentials={"username": USER, "password": site.password},
        viewport={"width": 1400, "height": 900})
    context.set_default_timeout(DEADLINE_MS)
    yield context
    context.close()


def test_a_browser_without_the_credentials_is_refused(browser: Browser, site: FlowerSite) -> None:
    anonymous = browser.new_context()
    wrong = browser.new_context(http_credentials={"username": USER,
                                                  "password": f"wrong-{site.password}"})
    try:
        for path in ("/", "/workers", "/tasks"):
            url = site.url(path)
            page = anonymous.new_page()
            # Chromium gets the 401 and, having no credentials to offer, stops the navigation.
            with page.expect_response(url) as refused, pytest.raises(
                    PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                page.goto(url)
            assert refused.value.status == 401, path
            assert refused.value.headers["www-authenticate"].startswith("Basic"), path
            # With a wrong password, it offers that once and shows what Flower answers.
            page = wrong.new_page()
            response = page.goto(url)
            assert response is not None and response.status == 401, path
            assert all(node not in page.content() for node in site.nodes.values()), path
    finally:
        anonymous.close()
        wrong.close()


def task_names(page: Page, url: str) -> list[str]:
    """The Name column of the tasks table, as one fresh load of ``url`` draws it (the table
    fills from an XHR once per load; Flower does not poll it)."""
    page.goto(url)
    rows = page.locator("#tasks-table tbody tr")
    expect(rows.first).to_be_attached()  # the body stays empty until the XHR's answer is drawn
    return page.locator("#tasks-table tbody tr td:first-child").all_inner_texts()


def tasks_of(site: FlowerSite, pool: str) -> str:
    """The succeeded tasks of our ``pool`` worker (Flower sees every worker on the broker)."""
    return site.url(f"/tasks?state=SUCCESS&worker={quote(site.nodes[pool])}")


def test_flower_shows_our_workers_and_aidist_tasks(signed_in: BrowserContext, site: FlowerSite,
                                                   client: Client) -> None:
    page = signed_in.new_page()
    response = page.goto(site.url("/workers"))
    assert response is not None and response.status == 200
    # The Workers table refreshes itself from Flower's event state every second.
    for node in site.nodes.values():
        row = page.locator("#workers-table tbody tr", has_text=node)
        expect(row).to_contain_text("Online")
    page.screenshot(path=artifacts_dir() / "flower-workers.png", full_page=True)

    # Submitted once Flower sees the workers: its event receiver is listening by then.
    private = f"private-input-{uuid.uuid4().hex}"
    submitted = {"gpu": [*client.infer_many(GPU_MODEL, [f"{private} gpu {i}" for i in range(5)]),
                         client.infer(GPU_MODEL, f"{private} gpu alone")],
                 "cpu": client.preprocess_many(CPU_OP, [f"{private} cpu {i}" for i in range(5)])}
    client.results_of([job for jobs in submitted.values() for job in jobs], timeout=60)

    listed: dict[str, list[str]] = {}
    try:
        for pool, target in TARGETS.items():
            def all_shown(pool: str = pool, target: str = target) -> bool:
                """Every job we gave the pool, counted in the names of its succeeded tasks."""
                listed[pool] = task_names(page, tasks_of(site, pool))
                return jobs_named(target, listed[pool]) >= len(submitted[pool])

            try:
                wait_for(all_shown, timeout=60, interval=0.5,
                         message=f"{target} tasks of {site.nodes[pool]} on /tasks")
            except pytest.fail.Exception as exc:
                pytest.fail(f"{exc}; its Name column showed {listed[pool]}")
            assert private not in page.content()
    finally:
        task_names(page, site.url("/tasks?state=SUCCESS"))
        page.screenshot(path=artifacts_dir() / "flower-tasks.png", full_page=True)
    assert f"{GPU_MODEL} (1 job)" in listed["gpu"], listed["gpu"]  # the lone infer()

    # Each task's own page shows its arguments and result: summaries, never the inputs.
    for pool, target in TARGETS.items():
        page.goto(tasks_of(site, pool))
        name_cell = page.locator("td:first-child", has_text=shadow_name(target))
        row = page.locator("#tasks-table tbody tr").filter(has=name_cell).first
        row.locator("a[href*='/task/']").click()
        page.wait_for_url(re.compile(r"/task/[0-9a-f-]{36}$"))
        expect(page.locator("body")).to_contain_text(shadow_name(target, whole=False))
        expect(page.locator("body")).to_contain_text("SUCCESS")
        assert private not in page.content(), f"{target}'s task page shows a job input"
