"""The page of `janus serve` in a real browser (headless Chromium driven by
Selenium), on loopback with the tiny fixture: a question about an uploaded
image streams the API's answer, generated images show the API's pixels, and
Stop cancels the request on the server."""

import base64
import io
import json
import os
import shutil
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import serve

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by python/test.sh")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server(fixture_dir):
    yield from serve(fixture_dir)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromedriver are installed by .ci/run (apt: chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    return values[0] if values else 0.0


def wait(driver, condition, seconds=30):
    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition())


def fill(driver, element_id, value):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def screenshot(driver, name):
    folder = os.environ.get("JANUS_WEB_SCREENSHOTS")
    if folder:
        driver.save_screenshot(os.path.join(folder, name))


def test_a_question_about_an_uploaded_image_streams_the_apis_answer(server, browser, fixture_dir):
    image = fixture_dir / "images" / "wide.png"
    browser.get(server)
    wait(browser, lambda: browser.find_element(By.ID, "model-name").text != "")
    assert not browser.find_element(By.ID, "key-form").is_displayed(), "no key asked without --api-key"
    assert not browser.find_element(By.ID, "error").is_displayed()
    browser.find_element(By.ID, "und-file").send_keys(str(image))
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#und-pending li")) == 1)
    browser.find_element(By.CSS_SELECTOR, "#panel-understand summary").click()
    fill(browser, "und-max-tokens", 12)
    answers = []
    for question in ("Describe this image in detail.", "And the colours?"):
        fill(browser, "und-question", question)
        browser.find_element(By.ID, "und-send").click()
        wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "li.assistant[data-state=done]"))
             == len(answers) + 1)
        answers.append(browser.find_elements(By.CSS_SELECTOR, "li.assistant .text")[-1].get_attribute("textContent"))
    screenshot(browser, "web-understand.png")
    url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    first = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": "Describe this image in detail."}]}
    api = post(server + "/v1/chat/completions", {"messages": [first], "max_tokens": 12})
    assert answers[0] == api["choices"][0]["message"]["content"]
    follow_up = [first, {"role": "assistant", "content": answers[0]},
                 {"role": "user", "content": [{"type": "text", "text": "And the colours?"}]}]
    api = post(server + "/v1/chat/completions", {"messages": follow_up, "max_tokens": 12})
    assert answers[1] == api["choices"][0]["message"]["content"], "the follow-up keeps the conversation"
    browser.find_element(By.ID, "und-new").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#conversation li") == []


def pixels(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_generated_images_show_the_apis_pixels(server, browser):
    browser.get(server)
    browser.find_element(By.ID, "tab-generate").click()
    fill(browser, "gen-prompt", "A red apple on a wooden table")
    fill(browser, "gen-n", 2)
    fill(browser, "gen-seed", 7)
    assert not browser.find_element(By.ID, "gen-random").is_selected(), "typing a seed turns random off"
    browser.find_element(By.ID, "gen-go").click()
    wait(browser, lambda: browser.find_element(By.ID, "gen-grid").get_attribute("data-state") == "done")
    screenshot(browser, "web-generate.png")
    shown = [img.get_attribute("src").split(",", 1)[1] for img in browser.find_elements(By.CSS_SELECTOR, "#gen-grid img")]
    assert not browser.find_elements(By.CSS_SELECTOR, "#gen-grid img.preview"), "previews give way to the images"
    captions = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#gen-grid figcaption span")]
    assert captions == ["seed 7 · image 1", "seed 7 · image 2"]
    api = post(server + "/v1/images/generations", {"prompt": "A red apple on a wooden table", "n": 2, "seed": 7})
    assert len(shown) == 2
    for got, want in zip(shown, api["data"]):
        assert np.array_equal(pixels(got), pixels(want["b64_json"]))


@pytest.fixture(scope="module")
def long_server(fixture_dir, tmp_path_factory):
    """The tiny model drawing a 24x24 code grid (576 steps per image, as the
    released models): long enough to stop mid-generation."""
    folder = tmp_path_factory.mktemp("tiny576")
    for f in fixture_dir.iterdir():
        if f.is_file() and f.name != "processor_config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((fixture_dir / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "num_image_tokens": 576}))
    yield from serve(folder)


def test_stop_cancels_the_request_on_the_server(long_server, browser):
    browser.get(long_server)
    browser.find_element(By.ID, "tab-generate").click()
    fill(browser, "gen-prompt", "A cat")
    fill(browser, "gen-n", 16)
    browser.find_element(By.ID, "gen-go").click()
    progress = browser.find_element(By.ID, "gen-progress")
    wait(browser, lambda: progress.get_attribute("max") == "576" and int(progress.get_attribute("value")) > 0)
    assert metric(long_server, "janus_running_requests") == 1
    # The first preview of every image, a third of the way in.
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gen-grid img.preview")) == 16, seconds=120)
    screenshot(browser, "web-generate-preview.png")
    browser.find_element(By.ID, "gen-stop").click()
    grid = browser.find_element(By.ID, "gen-grid")
    wait(browser, lambda: grid.get_attribute("data-state") == "stopped")
    wait(browser, lambda: metric(long_server, "janus_running_requests") == 0, seconds=10)
    assert metric(long_server, "janus_image_steps_total") < 576, "the server stopped mid-generation"
    assert browser.find_elements(By.CSS_SELECTOR, "#gen-grid img.final") == []


def test_an_api_error_is_shown_in_the_page(server, browser):
    browser.get(server)
    browser.find_element(By.ID, "tab-generate").click()
    fill(browser, "gen-prompt", "cat " * 3000)  # longer than the model's context
    browser.find_element(By.ID, "gen-go").click()
    wait(browser, lambda: browser.find_element(By.ID, "error").is_displayed())
    assert "context" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "gen-grid").get_attribute("data-state") == "error"


def test_with_an_api_key_the_page_asks_for_it_once(fixture_dir, browser):
    for url in serve(fixture_dir, "--api-key", "sesame"):
        browser.get(url)
        wait(browser, lambda: browser.find_element(By.ID, "key-form").is_displayed())
        assert "API key" in browser.find_element(By.ID, "error").text
        fill(browser, "api-key", "sesame")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait(browser, lambda: browser.find_element(By.ID, "model-name").text != "")
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        browser.refresh()  # kept for the browser session
        wait(browser, lambda: browser.find_element(By.ID, "model-name").text != "")
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        browser.execute_script("sessionStorage.clear()")
