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
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
SCREENSHOTS = ROOT / "build" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which("chromium") is None or shutil.which("chromedriver") is None,
        reason="needs Debian chromium and chromium-driver (.ci/run installs them)",
    ),
]

LOCAL_SCHEMES = {"data", "blob", "about", "chrome-extension"}


def _build_site_if_missing() -> None:
    if (SITE / "index.html").exists():
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT, env=env, check=True)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    _build_site_if_missing()
    handler = functools.partial(_QuietHandler, directory=str(SITE))
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


def _pages() -> list[str]:
    _build_site_if_missing()
    pages = []
    for index in sorted(SITE.rglob("index.html")):
        rel = index.parent.relative_to(SITE).as_posix()
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


def test_every_page_loads_offline_without_errors(driver, base_url: str) -> None:
    problems = []
    pages = _pages()
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
