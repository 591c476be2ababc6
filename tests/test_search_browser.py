"""The search page in a real browser: headless Debian Chromium driven by Playwright (system browser, nothing
downloaded). Uploads a real DICOM, waits for the results, checks k thumbnails with distances, opens a RELAX
explanation and saves a screenshot (to docs/ with MEDCBIR_SCREENSHOTS=docs)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.search_fixtures import K, service, shipped_file

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _browser_or_skip() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install the Debian chromium package (.ci/run does: apt-get install -y chromium)")
        pytest.skip("Debian chromium not installed here (apt-get install chromium); CI installs it")
    pytest.importorskip("playwright.sync_api", reason="pip package playwright missing (the web extra)")
    return CHROMIUM


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    from search.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_upload_dicom_shows_k_results(server_url, tmp_path):
    executable = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    dicom = shipped_file("CT_small.dcm")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route(re.compile(r"^(?!http://127\.0\.0\.1).*"), lambda route: route.abort())  # nothing outside
        page.goto(server_url)
        page.wait_for_function("document.getElementById('info').textContent.includes('items')")
        page.fill("#k", str(K))
        page.set_input_files("#file", str(dicom))
        page.wait_for_function(f"document.querySelectorAll('#results .result').length === {K}", timeout=60_000)
        distances = page.locator("#results .result .distance").all_inner_texts()
        assert len(distances) == K and all(re.fullmatch(r"d=\d+\.\d{4}", d) for d in distances), distances
        values = [float(d[2:]) for d in distances]
        assert values == sorted(values)
        page.wait_for_function("[...document.querySelectorAll('#results img')].every(i => i.complete && "
                               "i.naturalWidth > 0)")
        assert page.locator("#query-name").inner_text() == "CT_small.dcm"
        box = page.locator("#query-image").bounding_box()  # drag a region: the search reruns on it
        with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
            page.mouse.move(box["x"] + 0.25 * box["width"], box["y"] + 0.25 * box["height"])
            page.mouse.down()
            page.mouse.move(box["x"] + 0.75 * box["width"], box["y"] + 0.75 * box["height"], steps=5)
            page.mouse.up()
        assert answer.value.ok and b'name="crop"' in answer.value.request.post_data_buffer
        assert page.locator("#crop-box").is_visible()
        page.wait_for_function(f"document.querySelectorAll('#results .result').length === {K}")
        page.locator("#results .result").first.click()
        page.wait_for_selector("#explanation:not([hidden])", timeout=60_000)
        page.wait_for_function("document.getElementById('explain-result').naturalWidth > 0")
        folder = Path(os.environ["MEDCBIR_SCREENSHOTS"]) if os.environ.get("MEDCBIR_SCREENSHOTS") else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / "search_page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000 and not errors, errors
