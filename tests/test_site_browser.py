"""The built site as a reader meets it: every page in headless Chromium, offline.

Serves ``site/`` on loopback and opens every page with Debian's chromium through
selenium (system chromedriver; nothing is downloaded). Checks: no console errors, no
request leaves loopback, every image loads, and the site search finds "TensorScatter".
Screenshots of the home page and a proposal page go to ``build/screenshots/`` (CI
uploads them as artifacts).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"

HAVE_BROWSER = shutil.which("chromium") is not None and shutil.which("chromedriver") is not None
if not HAVE_BROWSER and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser tests: install chromium and chromium-driver (.ci/run does)")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAVE_BROWSER, reason="needs Debian chromium and chromium-driver (.ci/run installs them)"),
]

LOCAL_SCHEMES = {"data", "blob", "about", "chrome-extension"}


@pytest.fixture(scope="module")
def base_url(site_dir: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def _pages(site: Path) -> list[str]:
    pages = []
    for index in sorted(site.rglob("index.html")):
        rel = index.parent.relative_to(site).as_posix()
        if not rel.startswith(("assets", "search")):
            pages.append("" if rel == "." else f"{rel}/")
    return pages


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _is_loopback(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in LOCAL_SCHEMES or parsed.hostname in ("127.0.0.1", "localhost")


def test_every_page_loads_offline_without_errors(driver, base_url: str, site_dir: Path) -> None:
    problems = []
    pages = _pages(site_dir)
    assert len(pages) >= 4, pages
    for page in pages:
        driver.get_log("browser")  # drop what earlier pages left
        driver.get_log("performance")
        driver.get(f"{base_url}/{page}")
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy images
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.images].map(i => i.loading = 'eager')).then(() =>"
            " Promise.all([...document.images].filter(i => !i.complete).map(i =>"
            " new Promise(r => { i.onload = i.onerror = r; })))).then(done);"
        )
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        problems += [f"{page}: image did not load: {src}" for src in broken]
        problems += [
            f"{page}: console {e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
        ]
        problems += [
            f"{page}: request left loopback: {url}" for url in _requested_urls(driver) if not _is_loopback(url)
        ]
    assert not problems, "\n".join(problems)


def test_search_finds_tensorscatter(driver, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/")
    driver.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
    box = WebDriverWait(driver, 20).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    box.send_keys("TensorScatter")
    results = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item") or False
    )
    assert any("TensorScatter" in r.text for r in results)


def test_screenshots_for_reviewers(driver, base_url: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, page in (("home", ""), ("kv_cache", "proposals/kv_cache/")):
        driver.get(f"{base_url}/{page}")
        path = SCREENSHOTS / f"{name}.png"
        assert driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000
