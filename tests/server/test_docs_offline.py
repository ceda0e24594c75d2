"""/docs and /redoc work with no network: every asset comes from the server itself."""

from __future__ import annotations

import re

import pytest

from adaptformer_server.app import create_app
from tests.server.test_ui import browser_missing, make_driver
from tests.support import adapter_bytes, live_server, serving


async def test_docs_pages_load_only_local_assets(vit, tasks_store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?["']([^"']+)["']""", html)
            urls = [u for pair in urls for u in pair if u]
            assert urls and not [u for u in urls if "//" in u], (page, urls)
            for url in urls:
                r = await client.get(url)
                assert r.status_code == 200 and r.content, url


@pytest.mark.e2e
@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_swagger_ui_shows_the_operations(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(tmp_path, lambda vit: {"shirts": adapter_bytes(vit, "shirts", seed=1)}) as url:
        driver = make_driver(tmp_path / "profile")
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(url + "/docs")
            paths = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path") or None)
            shown = {p.text.replace("\u200b", "") for p in paths}
            assert {"/predict", "/adapters", "/adapters/{task}"} <= shown
            driver.get(url + "/redoc")
            wait.until(lambda d: "POST /predict" in d.find_element(By.TAG_NAME, "body").text.replace("\n", " ") or None)
        finally:
            driver.quit()
