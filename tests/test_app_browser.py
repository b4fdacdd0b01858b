"""The web demo in a real browser: headless Debian Chromium driven by Selenium through Debian's chromium-driver.

A person's path through the page: open it, upload a synthetic DICOM, press Analyse, wait for the answer, read the
boxed image and the findings table; a bad upload shows the processor's message and the page keeps working. Each test
saves a screenshot in its temporary folder (`docs/app_screenshot.png`, shown in docs/web-demo.md, is the first
one's). Skipped, with the reason, where Chromium or its driver is not installed (`scripts/setup.sh` installs both
when run as root).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_support import build_taught_model, served_app
from PIL import Image

import app
from processing_litegpt import load_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Headless, and nothing that reaches the network on its own (the workplace has none but package registries).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--window-size=1280,1400", "--force-device-scale-factor=1")  # fmt: skip
ANSWER_TIMEOUT = 300  # seconds: a bound for a CPU shared with other work, not a speed target

pytestmark = pytest.mark.slow


def require_chromium() -> None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            pytest.skip(f"no {path}: install Debian's {package} (scripts/setup.sh does when run as root)")


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    return build_taught_model(tmp_path_factory.mktemp("app_browser"))


@pytest.fixture(scope="module")
def page_url(taught, tmp_path_factory):
    require_chromium()
    examples_dir = tmp_path_factory.mktemp("app_examples") / "examples"
    examples = app.prepare_examples(examples_dir)
    with served_app(app.LiteGPTDemo.load(str(taught.model_dir)), examples, str(examples_dir)) as url:
        yield url


@pytest.fixture
def browser(page_url):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page_url)
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = ANSWER_TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def upload_and_analyse(driver, path: Path) -> None:
    """Put `path` in the upload box as a person choosing it in the file dialog would, then press Analyse."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    # Every step waits for its element: on a busy machine the page is still being drawn when it is first served.
    file_input = wait(
        driver,
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")),
        timeout=60,
    )
    file_input.send_keys(str(path))
    wait(driver, lambda d: path.stem in d.find_element(By.ID, "upload").text, timeout=60)  # the upload is listed
    wait(driver, expected_conditions.element_to_be_clickable((By.ID, "run")), timeout=60).click()


def findings_table(driver) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    # The table body is a grid of ARIA rows and cells (Gradio draws it as a virtual list, not <tr>/<td>).
    rows = driver.find_elements(By.CSS_SELECTOR, "#findings div[role=row]")
    return [[cell.text.strip() for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")] for row in rows]


def overlay_size(driver) -> tuple[int, int] | None:
    """Natural size of the image shown as the overlay, once it has loaded."""
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, "#overlay img")
    if not images:
        return None
    size = driver.execute_script(
        "return [arguments[0].complete, arguments[0].naturalWidth, arguments[0].naturalHeight]", images[0]
    )
    return (size[1], size[2]) if size[0] and size[1] else None


def test_uploaded_dicom_shows_boxed_overlay_and_findings_table(browser, taught, tmp_path):
    from selenium.webdriver.common.by import By

    labels = [label for label, _ in taught.abnormal.local_boxes]
    upload_and_analyse(browser, taught.abnormal.path)
    wait(browser, lambda d: [row[0] for row in findings_table(d) if row] == labels and overlay_size(d) is not None)

    assert overlay_size(browser) == (taught.abnormal.width, taught.abnormal.height)
    rows = findings_table(browser)
    for row, (label, box) in zip(rows, taught.abnormal.local_boxes):
        assert row[0] == label and len(row) == len(app.FINDING_COLUMNS)
        coordinates, score = [float(c) for c in row[1:5]], float(row[5])
        tolerance = 0.5 * max(taught.abnormal.width, taught.abnormal.height) / 100  # half a grid step
        assert all(abs(a - b) <= tolerance + 0.05 for a, b in zip(coordinates, box))
        assert 0.0 < score <= 1.0
    raw = browser.find_element(By.CSS_SELECTOR, "#raw textarea").get_attribute("value")
    assert raw.strip() == taught.abnormal.grounding
    assert f"{len(labels)} finding(s)" in browser.find_element(By.ID, "summary").text

    screenshot = tmp_path / "app_screenshot.png"
    assert browser.save_screenshot(str(screenshot))
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1280


def test_bad_upload_shows_the_message_and_the_page_keeps_working(browser, taught, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    bad = tmp_path / "scan.dcm"
    bad.write_bytes(b"")
    with pytest.raises(Exception) as processor_error:
        load_image(bad)
    message = str(processor_error.value).replace(str(bad), bad.name)

    upload_and_analyse(browser, bad)
    wait(browser, lambda d: message in d.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(tmp_path / "bad_upload.png"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Error" in body and "Traceback" not in body

    # The same page, next request: the normal example (the image the model was taught as normal).
    example = (By.XPATH, "//button[contains(., 'synthetic DICOM') and contains(., 'No finding')]")
    wait(browser, expected_conditions.element_to_be_clickable(example), timeout=60).click()
    wait(browser, lambda d: Path(taught.normal.path).stem in d.find_element(By.ID, "upload").text, timeout=60)
    wait(browser, expected_conditions.element_to_be_clickable((By.ID, "run")), timeout=60).click()
    wait(browser, lambda d: overlay_size(d) == (taught.normal.width, taught.normal.height))
    assert findings_table(browser) == []
    assert "No finding" in browser.find_element(By.ID, "summary").text
