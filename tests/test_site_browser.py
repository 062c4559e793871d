"""The built site as a reader meets it: every page in headless Chromium, offline.

Serves ``site/`` on loopback and opens every page with Debian's chromium through
selenium (system chromedriver; nothing is downloaded). Checks: no console errors, no
request leaves loopback, every image loads, and the site search finds "TensorScatter".
Then every page is inspected as rendered, at a laptop width and a phone width, for each
class of defect a reader meets (``site_checks/inspect.js``): Python rendered as prose,
tables or pictures wider than their column, words broken inside table cells, pictures
shrunk past legibility without a link to their full size, issue/PR citations that are not
links, raw marker text, and graph text that the dark mode makes unreadable. Light and dark
screenshots of every page go to ``build/screenshots/`` (CI uploads them as artifacts).
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


def _load_problems(driver, page: str) -> list[str]:
    """What went wrong while ``page`` loaded: images that did not load, console errors, and
    requests that left loopback (the driver's logs are drained before each page)."""
    broken = driver.execute_script(
        "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
    )
    problems = [f"{page}: image did not load: {src}" for src in broken]
    problems += [
        f"{page}: console {e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
    ]
    problems += [f"{page}: request left loopback: {url}" for url in _requested_urls(driver) if not _is_loopback(url)]
    return problems


def test_every_page_loads_offline_without_errors(inspected, site_dir: Path) -> None:
    """Checked on each page's first load in the inspection pass below (every image eager)."""
    assert len(_pages(site_dir)) >= 4
    _assert_none(inspected, "load")


def test_search_finds_tensorscatter(driver, base_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.set_window_size(WIDTHS["laptop"], 1000)  # the inspection pass may have left it at phone width
    driver.get(f"{base_url}/")
    driver.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
    box = WebDriverWait(driver, 20).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    box.send_keys("TensorScatter")
    results = WebDriverWait(driver, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item") or False
    )
    assert any("TensorScatter" in r.text for r in results)


INSPECT = (Path(__file__).parent / "site_checks" / "inspect.js").read_text()
WIDTHS = {"laptop": 1280, "phone": 390}
SCREENSHOT_MAX_HEIGHT = 12_000  # px; the rest of a longer page is left out


def _load_with_images(driver, url: str) -> None:
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    driver.get(url)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "[...document.images].forEach(i => i.loading = 'eager');"
        "Promise.all([...document.images].filter(i => !i.complete).map(i =>"
        " new Promise(r => { i.onload = i.onerror = r; }))).then(done);"
    )


def _screenshot(driver, path: Path, width: int) -> None:
    import base64

    height = min(driver.execute_script("return document.documentElement.scrollHeight"), SCREENSHOT_MAX_HEIGHT)
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"]
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(png))


@pytest.fixture(scope="module")
def inspected(driver, base_url: str, site_dir: Path) -> dict[str, list[str]]:
    """Every page at both widths, light and dark: the defects found, by class, each as
    'page (width, scheme): what'. Saves a light and a dark screenshot of every page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[str]] = {}
    for page in _pages(site_dir):
        driver.set_window_size(WIDTHS["laptop"], 1000)
        _load_with_images(driver, f"{base_url}/{page}")
        found.setdefault("load", []).extend(_load_problems(driver, page))
        for width_name, width in WIDTHS.items():
            driver.set_window_size(width, 1000)  # the page reflows to the new width: no reload
            for scheme in ("default", "slate"):
                driver.execute_script(f"document.body.setAttribute('data-md-color-scheme', '{scheme}')")
                for kind, items in driver.execute_script(INSPECT).items():
                    where = f"/{page} ({width_name}, {'dark' if scheme == 'slate' else 'light'})"
                    found.setdefault(kind, []).extend(f"{where}: {item}" for item in items)
                if width_name == "laptop":
                    name = (page.strip("/").replace("/", "_") or "home") + ("-dark" if scheme == "slate" else "")
                    _screenshot(driver, SCREENSHOTS / f"{name}.png", width)
    return found


def _assert_none(found: dict[str, list[str]], kind: str) -> None:
    items = list(dict.fromkeys(found.get(kind, [])))  # each defect once, in page order
    assert not items, f"{len(items)} found:\n" + "\n".join(items[:40])


def test_no_python_rendered_as_prose(inspected) -> None:
    """Code shown without a fenced block around it reads as one flowing paragraph."""
    _assert_none(inspected, "prose")


def test_nothing_wider_than_its_column(inspected) -> None:
    """A table or picture wider than the text column sits in a scroll wrapper."""
    _assert_none(inspected, "overflow")


def test_no_word_broken_inside_a_table_cell(inspected) -> None:
    """Identifiers and numbers in tables keep whole; a narrow column scrolls instead."""
    _assert_none(inspected, "broken")


def test_every_picture_legible_or_linked_to_full_size(inspected) -> None:
    _assert_none(inspected, "pictures")


def test_every_issue_citation_is_a_link(inspected) -> None:
    _assert_none(inspected, "citations")


def test_no_raw_marker_text(inspected) -> None:
    _assert_none(inspected, "markers")


def test_graph_text_readable_in_dark_mode(inspected) -> None:
    _assert_none(inspected, "dark")


def test_light_and_dark_screenshots_of_every_page(inspected, site_dir: Path) -> None:
    for page in _pages(site_dir):
        name = page.strip("/").replace("/", "_") or "home"
        for path in (SCREENSHOTS / f"{name}.png", SCREENSHOTS / f"{name}-dark.png"):
            assert path.exists() and path.stat().st_size > 10_000, path
