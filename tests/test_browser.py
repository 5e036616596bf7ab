"""The web page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium):
load the page, type a query, see the result thumbnails render, open a result's explanation."""

from __future__ import annotations

import shutil
import socket
import threading
import urllib.request

import pytest
from helpers import served_index

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    uvicorn = pytest.importorskip("uvicorn")
    from itm.service.app import create_app

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as patch, socket.socket() as sock:
        patch.setenv("ITM_CACHE", str(root / "cache"))
        # the socket listens before the server thread starts: a request made while uvicorn is still
        # starting waits in the socket's queue instead of being refused
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(served_index(root)), log_level="warning")
        served = uvicorn.Server(config)
        thread = threading.Thread(target=served.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        with urllib.request.urlopen(url + "/", timeout=60) as page:  # answered once the server runs
            assert page.status == 200
        yield url
        served.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(browser, condition, what: str, timeout: float = 30.0):
    """The condition's first truthy value (selenium's WebDriverWait: ``condition`` is called with the
    driver until it holds); a page that never gets there fails the test, saying ``what`` it awaited."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout).until(condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}") from None


def image_loaded(element):
    """An expected condition: ``element`` (an <img>) has loaded a picture wider than 100 px."""
    def loaded(driver):
        return driver.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 100", element)
    return loaded


def test_search_renders_thumbnails_and_opens_the_explanation(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/")
    box = browser.find_element(By.ID, "query")
    box.send_keys("a red square")
    browser.find_element(By.ID, "go").click()
    cards = wait_for(browser, EC.presence_of_all_elements_located((By.CSS_SELECTOR, ".hit img")), "result cards")
    assert len(cards) == 5  # every indexed photo, k = 12
    rendered = "return Array.from(document.querySelectorAll('.hit img')).every(i => i.complete && i.naturalWidth > 0)"
    wait_for(browser, lambda driver: driver.execute_script(rendered), "every thumbnail rendered")
    assert "score" in browser.find_element(By.CSS_SELECTOR, ".hit .meta").text
    browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
    explanation = wait_for(browser, EC.presence_of_element_located((By.ID, "explanation")), "an explanation")
    wait_for(browser, image_loaded(explanation), "the explanation sheet loaded")
    assert "Where each word looks" in browser.find_element(By.ID, "explain").text
    assert "method=concept" in explanation.get_attribute("src")  # the default explanation
    assert "'a guess'" in browser.find_element(By.ID, "legend").text  # how to read the sheet's panels

    Select(browser.find_element(By.ID, "method")).select_by_value("attention")
    browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
    wait_for(browser, EC.text_to_be_present_in_element_attribute((By.ID, "explanation"), "src", "method=attention"),
             "the attention explanation")
    wait_for(browser, image_loaded(browser.find_element(By.ID, "explanation")), "the attention sheet loaded")
    assert "where the model looked" in browser.find_element(By.ID, "legend").text


def test_words_the_models_cannot_read_are_shown_under_the_query_box(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(server + "/")
    box = browser.find_element(By.ID, "query")
    box.send_keys("a red zzzqqq square")
    browser.find_element(By.ID, "go").click()
    wait_for(browser, EC.presence_of_all_elements_located((By.CSS_SELECTOR, ".hit img")), "result cards")
    assert browser.find_element(By.ID, "words").text == "Note: the model could not read: zzzqqq"
    box.clear()
    box.send_keys("zzzqqq xxyy")  # nothing readable: a message, not a confident list
    browser.find_element(By.ID, "go").click()
    wait_for(browser, EC.text_to_be_present_in_element((By.ID, "status"), "error"), "an error status")
    assert "can read none of its words (zzzqqq, xxyy)" in browser.find_element(By.ID, "status").text
    assert not browser.find_elements(By.CSS_SELECTOR, ".hit") and browser.find_element(By.ID, "words").text == ""


def test_the_explanation_draws_no_panel_for_function_words(server, browser):
    """Issue 45: the page's explanation sheet has panels for "red", "square" and "dog", none for "a",
    "near", "the". The sheet is one PNG, so the answer names the words it drew (``X-Explained-Words``);
    the page's own image request is repeated from inside the page to read that header."""
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.get(server + "/")
    browser.find_element(By.ID, "query").send_keys("a red square near the dog")
    browser.find_element(By.ID, "go").click()
    wait_for(browser, EC.presence_of_all_elements_located((By.CSS_SELECTOR, ".hit img")), "result cards")
    browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
    explanation = wait_for(browser, EC.presence_of_element_located((By.ID, "explanation")), "an explanation")
    wait_for(browser, image_loaded(explanation), "the explanation sheet loaded")
    assert "text=a%20red%20square%20near%20the%20dog" in explanation.get_attribute("src")
    browser.set_script_timeout(60)
    answer = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('explanation').src)"
        ".then(r => done([r.status, r.headers.get('content-type'), r.headers.get('x-explained-words')]))"
        ".catch(e => done([0, String(e), null]));")
    status, kind, words = answer
    assert status == 200 and kind == "image/png"
    assert json.loads(words) == ["red", "square", "dog"]
