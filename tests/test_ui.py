"""The chat UI, used as a person would: headless Chromium (the system's ``chromium`` and
``chromium-driver``) driven by Selenium against ``polymodal serve --ui``. Screenshots go to the test's
folder (and to ``$POLYMODAL_UI_SCREENSHOTS`` when set)."""

import io
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from needs import in_ci, require

require("gradio", "ui")
webdriver = require("selenium.webdriver")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from polymodal import watermark  # noqa: E402
from polymodal.content import Document, Image  # noqa: E402
from polymodal.generation import SamplingConfig, generate  # noqa: E402
from polymodal.serve import ServeConfig  # noqa: E402
from test_serve import Served, tiny_run  # noqa: E402

MAX_TOKENS = 48


def browser_paths() -> tuple[str, str]:
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        message = "Chromium and its driver are needed (Debian: apt-get install chromium chromium-driver)"
        if in_ci():
            pytest.fail(message)  # CI installs them (.ci/run): missing there is a broken machine
        pytest.skip(message)
    return binary, driver


@pytest.fixture(scope="module")
def run():  # noqa: ANN201
    return tiny_run()


@pytest.fixture(scope="module")
def served(run):  # noqa: ANN201
    browser_paths()  # skip (or fail in CI) before a server is started for nothing
    s = Served(run, ServeConfig(model_name="tiny", max_completion_tokens=MAX_TOKENS), ui=True)
    yield s
    s.stop()


@contextmanager
def open_ui(url: str) -> Iterator:
    """Headless Chromium on the UI at ``url``, once its prompt box is there; closed on the way out."""
    binary, driver = browser_paths()
    options = Options()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        browser.get(url + "/ui/")
        WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(served):  # noqa: ANN201
    with open_ui(served.url) as browser:
        yield browser


def screenshot(browser, folder: Path, name: str) -> Path:  # noqa: ANN001
    path = folder / name
    browser.save_screenshot(str(path))
    if os.environ.get("POLYMODAL_UI_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["POLYMODAL_UI_SCREENSHOTS"]) / name)
    return path


def ask(browser, text: str) -> None:  # noqa: ANN001
    box = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def settled(browser) -> bool:  # noqa: ANN001
    """The answer is complete: the prompt box is usable again and nothing is pending."""
    box = browser.find_elements(By.CSS_SELECTOR, "#prompt textarea")
    pending = browser.find_elements(By.CSS_SELECTOR, "#chat .pending, #chat .generating")
    return bool(box) and box[0].is_enabled() and not pending


def bot_messages(browser):  # noqa: ANN001, ANN201
    return browser.find_elements(By.CSS_SELECTOR, "#chat [data-testid='bot']")


def test_ask_about_an_uploaded_picture(page, run, tmp_path):
    picture = tmp_path / "red.png"
    PILImage.new("RGB", (8, 8), (255, 0, 0)).save(picture)
    page.find_element(By.CSS_SELECTOR, "#prompt input[type=file]").send_keys(str(picture))
    WebDriverWait(page, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#prompt img"))  # the thumbnail
    ask(page, "what is this?")
    WebDriverWait(page, 60).until(lambda b: bot_messages(b) and settled(b))
    shown = bot_messages(page)[-1].text.strip()
    # what the model says to the same chat, greedy, as the UI's defaults ask
    prompt = Document.chat(("user", [Image(PILImage.open(picture).convert("RGB")), "what is this?"]))
    [expected] = generate(run, [prompt], sampling=SamplingConfig(temperature=0, max_new_tokens=MAX_TOKENS))
    assert shown == expected.part.text.strip() and shown
    user = page.find_elements(By.CSS_SELECTOR, "#chat [data-testid='user']")
    assert any(m.find_elements(By.TAG_NAME, "img") for m in user)  # the picture is in the conversation
    assert screenshot(page, tmp_path, "ui_ask_about_a_picture.png").stat().st_size > 0


def test_ask_for_a_picture_and_see_it(page, run, served, tmp_path):
    choose_output(page, "image")
    ask(page, "draw a red circle")

    def drawn(browser):  # noqa: ANN001, ANN202
        images = [i for m in bot_messages(browser) for i in m.find_elements(By.TAG_NAME, "img")]
        loaded = [i for i in images if browser.execute_script("return arguments[0].naturalWidth", i) > 0]
        return loaded if loaded and settled(browser) else None

    [img] = WebDriverWait(page, 60).until(drawn)
    assert img.is_displayed()
    src = img.get_attribute("src")
    with urllib.request.urlopen(src if src.startswith("http") else served.url + src, timeout=30) as reply:
        shown = np.asarray(PILImage.open(io.BytesIO(reply.read())).convert("RGB"))
    sampling = SamplingConfig(temperature=0, max_new_tokens=MAX_TOKENS, guidance_scale=3.0)
    [expected] = generate(run, [Document.chat(("user", ["draw a red circle"]))], output="image", sampling=sampling)
    marked = watermark.mark_image(expected.part, served.app.state.server.config.watermark_key)
    assert np.array_equal(shown, np.asarray(marked.pixels))  # the picture the model drew, with the server's mark
    assert screenshot(page, tmp_path, "ui_draw.png").stat().st_size > 0


def choose_output(browser, label: str) -> None:  # noqa: ANN001
    browser.find_element(By.XPATH, "//button[contains(., 'Settings')]").click()
    choice = f"//*[@id='output']//label[normalize-space(.)='{label}']"
    WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.XPATH, choice))[0].click()


def test_text_and_speech_come_back_and_the_speech_plays(page, served, tmp_path):
    choose_output(page, "text + speech")
    ask(page, "say hello")

    def spoken(browser):  # noqa: ANN001, ANN202
        players = [
            p for m in bot_messages(browser) for p in m.find_elements(By.CSS_SELECTOR, "[data-testid='waveform-Audio']")
        ]
        return players if players and settled(browser) else None

    WebDriverWait(page, 60).until(spoken)
    links = [
        a.get_attribute("href") for a in page.find_elements(By.CSS_SELECTOR, "#chat [data-testid='download-link']")
    ]
    wav = next(link for link in links if link.endswith(".wav"))
    with urllib.request.urlopen(wav, timeout=30) as reply:
        clip = reply.read()
    assert clip[:4] == b"RIFF" and len(clip) > 44  # a WAV with samples
    page.find_element(By.CSS_SELECTOR, "#chat button[aria-label='Play']").click()
    WebDriverWait(page, 30).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#chat button[aria-label='Pause']"))
    assert bot_messages(page)[0].text.strip()  # the written answer came first
    screenshot(page, tmp_path, "ui_speech.png")


def test_a_direction_the_run_lacks_is_said_in_the_chat(tmp_path):
    browser_paths()  # skip (or fail in CI) before the server starts
    lacking = Served(tiny_run(("text->text", "image+text->text")), ServeConfig(model_name="text-only"), ui=True)
    try:
        with open_ui(lacking.url) as browser:
            choose_output(browser, "image")
            ask(browser, "draw a red circle")
            WebDriverWait(browser, 60).until(lambda b: bot_messages(b) and settled(b))
            said = bot_messages(browser)[-1].text
            assert "not trained for text->image" in said and "text->text" in said
    finally:
        lacking.stop()
