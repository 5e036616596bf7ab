"""The web page in a real headless browser (Debian's chromium + chromium-driver, driven by selenium):
load the page, type a query, see the result thumbnails render, open a result's explanation."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
from helpers import served_index

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    uvicorn = pytest.importorskip("uvicorn")
    from itm.service.app import create_app

    root = tmp_path_factory.mktemp("browser")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ITM_CACHE", str(root / "cache"))
        port = free_port()
        config = uvicorn.Config(create_app(served_index(root)), host="127.0.0.1", port=port, log_level="warning")
        served = uvicorn.Server(config)
        thread = threading.Thread(target=served.run, daemon=True)
        thread.start()
        for _ in range(100):
            if served.started:
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
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


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the page")


def test_search_renders_thumbnails_and_opens_the_explanation(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    box = browser.find_element(By.ID, "query")
    box.send_keys("a red square")
    browser.find_element(By.ID, "go").click()
    cards = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".hit img"))
    assert len(cards) == 5  # every indexed photo, k = 12
    rendered = "return Array.from(document.querySelectorAll('.hit img')).every(i => i.complete && i.naturalWidth > 0)"
    wait_for(lambda: browser.execute_script(rendered))
    assert "score" in browser.find_element(By.CSS_SELECTOR, ".hit .meta").text
    browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
    explanation = wait_for(lambda: browser.find_elements(By.ID, "explanation"))[0]
    wait_for(lambda: browser.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 100",
                                            explanation))
    assert "Where each word looks" in browser.find_element(By.ID, "explain").text
    assert "method=concept" in explanation.get_attribute("src")  # the default explanation
    assert "'a guess'" in browser.find_element(By.ID, "legend").text  # how to read the sheet's panels
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "method")).select_by_value("attention")
    browser.find_elements(By.CSS_SELECTOR, ".hit")[0].click()
    explanation = wait_for(lambda: [e for e in browser.find_elements(By.ID, "explanation")
                                    if "method=attention" in e.get_attribute("src")])[0]
    wait_for(lambda: browser.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 100",
                                            explanation))
    assert "where the model looked" in browser.find_element(By.ID, "legend").text


def test_words_the_models_cannot_read_are_shown_under_the_query_box(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    box = browser.find_element(By.ID, "query")
    box.send_keys("a red zzzqqq square")
    browser.find_element(By.ID, "go").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".hit img"))
    assert browser.find_element(By.ID, "words").text == "Note: the model could not read: zzzqqq"
    box.clear()
    box.send_keys("zzzqqq xxyy")  # nothing readable: a message, not a confident list
    browser.find_element(By.ID, "go").click()
    status = wait_for(lambda: "error" in browser.find_element(By.ID, "status").text
                      and browser.find_element(By.ID, "status").text)
    assert "can read none of its words (zzzqqq, xxyy)" in status
    assert not browser.find_elements(By.CSS_SELECTOR, ".hit") and browser.find_element(By.ID, "words").text == ""
