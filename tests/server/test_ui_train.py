"""The playground's "New task" panel in a real headless Chromium against a real server process: images per class,
start, the job's progress through its events, then the trained task on the predict tab.

Skipped, with the reason, where Chromium or chromedriver is missing (as the playground test).
"""

from __future__ import annotations

import httpx
import pytest

from tests.server.jobs_support import example
from tests.server.test_ui import browser_missing, make_driver
from tests.support import live_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~45 s: a server, Chromium and a training worker

ADMIN_KEY = "admin-secret-0123456789"


@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_new_task_panel_trains_and_tries_the_task(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    paths: dict[str, list[str]] = {}
    for label in ("red", "blue"):
        folder = tmp_path / "examples" / label
        folder.mkdir(parents=True)
        paths[label] = []
        for i in range(6):
            (folder / f"{i}.png").write_bytes(example(label, i))
            paths[label].append(str(folder / f"{i}.png"))
    probe = tmp_path / "probe.png"
    probe.write_bytes(example("red", 50))

    with live_server(tmp_path, lambda vit: {}, "--admin-key", ADMIN_KEY) as url:
        driver = make_driver(tmp_path / "profile")
        wait = WebDriverWait(driver, 120)
        try:
            driver.get(url + "/ui")
            driver.find_element(By.ID, "api-key").send_keys(ADMIN_KEY, Keys.TAB)
            driver.find_element(By.ID, "tab-train").click()
            wait.until(ec.visibility_of_element_located((By.ID, "train-task"))).send_keys("colours")
            epochs = driver.find_element(By.ID, "train-epochs")
            epochs.clear()
            epochs.send_keys("3")
            rows = driver.find_elements(By.CSS_SELECTOR, "#train-classes .class-row")
            assert len(rows) == 2
            for row, label in zip(rows, ("red", "blue"), strict=True):
                row.find_element(By.CLASS_NAME, "class-name").send_keys(label)
                row.find_element(By.CLASS_NAME, "class-files").send_keys("\n".join(paths[label]))
                wait.until(lambda d, r=row: "6 images" in r.find_element(By.CLASS_NAME, "count").text)
            driver.find_element(By.ID, "train-start").click()
            wait.until(ec.visibility_of_element_located((By.ID, "train-job")))
            assert driver.find_element(By.ID, "train-id").text.startswith("j-")
            wait.until(ec.text_to_be_present_in_element((By.ID, "train-status"), "succeeded"))
            assert driver.find_element(By.ID, "train-epoch").text == "3/3"
            assert float(driver.find_element(By.ID, "train-val").text) >= 0
            assert "trained colours" in driver.find_element(By.ID, "train-message").text
            wait.until(ec.element_to_be_clickable((By.ID, "train-try"))).click()
            wait.until(
                lambda d: (
                    Select(d.find_element(By.ID, "task")).first_selected_option.get_attribute("value") == "colours"
                )
            )
            driver.find_element(By.ID, "file").send_keys(str(probe))
            wait.until(ec.element_to_be_clickable((By.ID, "predict"))).click()
            wait.until(ec.visibility_of_element_located((By.ID, "result")))
            top = driver.find_element(By.CSS_SELECTOR, "#bars .bar-row .label").text
            assert top in ("red", "blue")
            info = httpx.get(f"{url}/adapters/colours").json()
            assert info["labels"] == ["blue", "red"]
            assert driver.find_element(By.ID, "version").text == info["version"]
        finally:
            driver.quit()
