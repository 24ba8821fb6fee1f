"""The live page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (nothing downloaded). The page shows each new part's verdict within a second of its MQTT
message, an operator's mark lands in the review folder, and the drift state changes when it should."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from line_helpers import Broker, Station, Subscriber, free_port, wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER and importlib.util.find_spec("selenium") and importlib.util.find_spec("paho")):
    if os.environ.get("CI"):
        pytest.fail("chromium, chromedriver or selenium missing on CI: .ci/run installs them")
    pytest.skip("chromium, chromedriver or selenium not installed", allow_module_level=True)

TOPIC = "plant/page"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_the_page_follows_the_line(sample_bundle, sample_root, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    broker = Broker(tmp_path / "broker").start()
    incoming, review, ui = tmp_path / "in", tmp_path / "review", free_port()
    incoming.mkdir()
    config = tmp_path / "station.toml"
    config.write_text(f'[station]\nname = "page"\ndrift_baseline = 10\nui = "127.0.0.1:{ui}"\nreview = "{review}"\n'
                      f'journal = "{tmp_path / "j"}"\n[[source]]\nurl = "folder:{incoming}"\n[[sink]]\n'
                      f'url = "mqtt://127.0.0.1:{broker.port}/{TOPIC}"\n')
    sub = Subscriber(broker.port, TOPIC, client_id="page-test")
    st = Station([sample_bundle, "--config", config], tmp_path / "station.log").start()
    good = sorted(sample_root.glob("test/good/*.png"))
    try:
        wait_for(lambda: st.status()["sources"]["source1"]["state"].startswith("watching"), 30, "the watch")
        browser.get(f"http://127.0.0.1:{ui}/")
        wait_for(lambda: "learning" in browser.find_element(By.ID, "drift").text, 10, "the page's first state")

        def shows(seq):  # the card's verdict, once the page shows the part
            try:
                cards = browser.find_elements(By.ID, f"part-{seq}")
                verdict = cards[0].text.split()[0] if cards else None
            except StaleElementReferenceException:  # the page drew the parts again in between: look again
                return None
            return verdict if verdict in ("good", "anomalous") else None

        delays = []
        for i in range(10):  # the drift watch's baseline, each part seen on the page
            shutil.copyfile(good[i % len(good)], incoming / f"g{i:02d}.png")
            message = wait_for(lambda: len(sub.on(TOPIC)) == i + 1 and sub.on(TOPIC)[-1], 30, "the MQTT message")
            t_mqtt = time.monotonic()
            verdict = wait_for(lambda: shows(message["seq"]), 10, "the part on the page", step=0.02)
            delays.append(time.monotonic() - t_mqtt)
            assert verdict == message["verdict"]
        assert max(delays) < 1.0, delays  # each verdict on the page within a second of its MQTT message
        for i in range(10, 13):  # three parts at once: the page draws at most one new picture a second, and the
            shutil.copyfile(good[i % len(good)], incoming / f"g{i:02d}.png")  # newest once the line stops
        message = wait_for(lambda: len(sub.on(TOPIC)) == 13 and sub.on(TOPIC)[-1], 30, "the MQTT messages")
        picture = f"const i = document.querySelector('#part-{message['seq']} img'); return i && i.complete && " \
                  "i.naturalWidth"
        assert wait_for(lambda: browser.execute_script(picture), 5, "the newest part's picture") > 100
        wait_for(lambda: "watching" in browser.find_element(By.ID, "drift").text, 10, "the drift watch watching")
        card = browser.find_element(By.ID, f"part-{message['seq']}")
        card.find_element(By.XPATH, ".//button[text()='mark defective']").click()
        marked = wait_for(lambda: list((review / "test" / "defective").glob("*.png")), 10, "the marked picture")
        assert len(marked) == 1 and (review / "reviews.jsonl").read_text().count('"mark": "defective"') == 1
        for i in range(60):  # the light changes: good parts score higher, until the alarm
            bright = ImageEnhance.Brightness(Image.open(good[i % len(good)]).convert("RGB")).enhance(1.5)
            bright.save(incoming / f"b{i:02d}.png")
            time.sleep(0.1)
            if st.status()["drift"]["state"] == "drift":
                break
        wait_for(lambda: browser.find_element(By.ID, "drift").text.startswith("drift"), 10, "the alarm on the page")
        assert "bad" in browser.find_element(By.ID, "drift").get_attribute("class")
        alarm = wait_for(lambda: browser.find_element(By.ID, "notice").text, 10, "the alarm's words")
        assert alarm.startswith("drift alarm (") and "above the threshold" in alarm, alarm
        browser.save_screenshot(str(tmp_path / "page.png"))
        target = os.environ.get("FRE_EDGE_PAGE_SCREENSHOT")
        if target:
            shutil.copyfile(tmp_path / "page.png", target)
        assert np.asarray(Image.open(tmp_path / "page.png")).std() > 10  # a drawn page, not a blank one
    finally:
        assert st.stop() == 0, st.output()
        sub.close()
        broker.stop()
