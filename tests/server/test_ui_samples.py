"""The playground's sample inputs: served from the package's manifest only, one click to a first answer."""

from __future__ import annotations

import json

import httpx
import pytest

from adaptformer_server.app import create_app
from adaptformer_server.routes.ui import EXAMPLES_DIR
from tests.server.test_ui import browser_missing, make_driver
from tests.support import adapter_bytes, live_server, serving

MANIFEST = json.loads((EXAMPLES_DIR / "manifest.json").read_text())


async def test_samples_are_listed_and_served_by_name_only(vit, tasks_store, make_settings):
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        listed = (await client.get("/ui/examples")).json()["examples"]
        assert listed == MANIFEST and {e["task"] for e in listed} >= {"fashion", "digits", "emoji", "motion"}
        gif = next(e["file"] for e in listed if e["file"].endswith(".gif"))
        r = await client.get(f"/ui/examples/{gif}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
        assert r.content == (EXAMPLES_DIR / gif).read_bytes()
        for name in ("manifest.json", "..%2F..%2Fweights%2Fembedded.safetensors", "nope.png"):
            r = await client.get(f"/ui/examples/{name}")
            assert r.status_code == 404 and "GET /ui/examples" in r.json()["error"]["message"]


@pytest.mark.e2e
@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_a_sample_button_predicts_that_sample(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    digits = [e for e in MANIFEST if e["task"] == "digits"]
    with live_server(tmp_path, lambda vit: {"digits": adapter_bytes(vit, "digits", num_classes=10, seed=3)}) as url:
        seven = next(e for e in digits if e["label"] == "7")
        expected = httpx.post(
            f"{url}/predict?task=digits&top_k=1", files={"image": (EXAMPLES_DIR / seven["file"]).read_bytes()}
        ).json()["predictions"][0][0]
        driver = make_driver(tmp_path / "profile")
        wait = WebDriverWait(driver, 60)
        try:
            driver.get(url + "/ui")
            wait.until(
                lambda d: any(
                    o.get_attribute("value") == "digits" for o in Select(d.find_element(By.ID, "task")).options
                )
            )
            Select(driver.find_element(By.ID, "task")).select_by_value("digits")
            buttons = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples button.sample") or None)
            assert [b.text for b in buttons] == [e["label"] for e in digits]
            driver.find_element(By.CSS_SELECTOR, f"#samples button[data-file='{seven['file']}']").click()
            wait.until(ec.visibility_of_element_located((By.ID, "result")))
            assert driver.find_element(By.CSS_SELECTOR, "#previews img").get_attribute("title") == seven["file"]
            top = driver.find_element(By.CSS_SELECTOR, "#bars .bar-row")
            assert top.find_element(By.CLASS_NAME, "label").text == expected["label"]
            assert float(top.find_element(By.CLASS_NAME, "score").text) == pytest.approx(expected["score"], abs=1e-3)
        finally:
            driver.quit()
