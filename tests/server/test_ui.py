"""The playground page in a real headless Chromium (Selenium), against a real server process.

Skipped, with the reason, where Chromium or chromedriver is missing (``make browser`` installs them as root).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.support import adapter_bytes, live_server, png

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("ADAPTFORMER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ADMIN_KEY = "admin-secret"


def browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"Chromium not found at {CHROMIUM} (as root: apt-get install chromium chromium-driver, or make browser)"
    if not os.path.exists(CHROMEDRIVER):
        return "chromedriver not found (as root: apt-get install chromium-driver, or make browser)"
    return None


def make_driver(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def test_static_files_are_served_offline(tmp_path):
    """No CDN: every script and stylesheet the page loads comes from the server itself."""
    from adaptformer_server.routes.ui import STATIC_DIR

    html = (STATIC_DIR / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert {p.name for p in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "app.css"}


@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_playground_predicts_and_manages_adapters(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def adapters(vit):
        (tmp_path / "pants.safetensors").write_bytes(adapter_bytes(vit, "pants", seed=4, winner=1))
        return {
            "shirts": adapter_bytes(vit, "shirts", seed=1, winner=2),
            "shoes": adapter_bytes(vit, "shoes", seed=2, winner=0),
        }

    image = tmp_path / "shirt.png"
    image.write_bytes(png(1, (56, 56)))
    with live_server(tmp_path, adapters, "--admin-key", ADMIN_KEY) as url:
        version = httpx.get(f"{url}/adapters/shirts").json()["version"]
        driver = make_driver(tmp_path / "profile")
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(url + "/")  # redirects to /ui
            assert "AdaptFormer" in driver.title
            wait.until(lambda d: len(Select(d.find_element(By.ID, "task")).options) >= 3)
            Select(driver.find_element(By.ID, "task")).select_by_value("shirts")
            driver.find_element(By.ID, "file").send_keys(str(image))
            wait.until(ec.element_to_be_clickable((By.ID, "predict"))).click()
            wait.until(ec.visibility_of_element_located((By.ID, "result")))
            rows = driver.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
            assert rows[0].find_element(By.CLASS_NAME, "label").text == "shirts-2"
            assert float(rows[0].find_element(By.CLASS_NAME, "score").text) > 0.99
            assert driver.find_element(By.ID, "version").text == version
            assert float(driver.find_element(By.ID, "latency").text) > 0

            # every image task on the same input
            Select(driver.find_element(By.ID, "task")).select_by_value("*")
            driver.find_element(By.ID, "predict").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .task-result")) == 2)
            tops = [
                box.find_element(By.CSS_SELECTOR, ".bar-row .label").text
                for box in driver.find_elements(By.CSS_SELECTOR, "#bars .task-result")
            ]
            assert tops == ["shirts-2", "shoes-0"]

            # the adapters tab: metadata, then upload and delete with the admin key
            driver.find_element(By.ID, "tab-adapters").click()
            row = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "tr[data-task='shirts']")))
            cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            assert cells[0] == "shirts" and cells[1] == version and cells[2] == "adaptformer" and cells[4] == "4"
            assert cells[6].endswith("%") and ("KiB" in cells[7] or "B" in cells[7])
            driver.find_element(By.ID, "upload-file").send_keys(str(tmp_path / "pants.safetensors"))
            driver.find_element(By.CSS_SELECTOR, "#upload button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "admin-status"), "upload failed"))
            assert "admin key" in driver.find_element(By.ID, "admin-status").text
            driver.find_element(By.ID, "api-key").send_keys(ADMIN_KEY, Keys.TAB)
            driver.find_element(By.CSS_SELECTOR, "#upload button").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "admin-status"), "installed pants"))
            wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "tr[data-task='pants']")))
            driver.find_element(By.CSS_SELECTOR, "button[data-task='shoes']").click()
            driver.switch_to.alert.accept()
            wait.until(ec.text_to_be_present_in_element((By.ID, "admin-status"), "deleted shoes"))
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "tr[data-task='shoes']"))
            assert [a["task"] for a in httpx.get(f"{url}/adapters").json()["adapters"]] == ["pants", "shirts"]
        finally:
            driver.quit()
