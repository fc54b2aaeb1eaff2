"""The live page at / in a real browser (Debian's Chromium, driven by Selenium): it updates while requests are sent,
answers an uploaded image at every width, shows the profile, and logs no error."""
import shutil
import threading
import time

import httpx
import pytest

import serving
from serving import Server

webdriver = pytest.importorskip('selenium.webdriver')
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which('chromedriver') is None,
                                 reason='no chromedriver: apt-get install -y chromium chromium-driver')]
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope='module')
def server(trained):
    running = Server(trained / 'scala')
    yield running
    running.stop()


@pytest.fixture(scope='module')
def browser():
    options = webdriver.ChromeOptions()
    for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,800'):
        options.add_argument(flag)
    options.binary_location = shutil.which('chromium')
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which('chromedriver')), options=options)
    yield driver
    driver.quit()


def test_the_page_is_self_contained(server):
    page = httpx.get(f'{server.url}/').text
    assert '<script>' in page and 'http://' not in page and 'https://' not in page and 'src=' not in page


def test_the_live_panel_follows_the_requests_and_an_image_is_answered_at_every_width(server, browser, trained,
                                                                                     tmp_path):
    png, label = serving.labelled_png(trained)
    browser.get(f'{server.url}/')
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, '#profile-table tbody tr')) == 13)
    sending = threading.Event()

    def load():
        while not sending.is_set():
            server.post(png)
            time.sleep(0.02)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait.until(lambda b: b.find_element(By.ID, 'answered-now').text not in ('-', '0'))
        assert int(browser.find_element(By.ID, 'offered-now').text) > 0
        assert browser.find_element(By.ID, 'chart-rate').get_attribute('innerHTML').count('<polyline') >= 2
    finally:
        sending.set()
        thread.join()
    image = tmp_path / 'shoe.png'
    image.write_bytes(png)
    browser.find_element(By.ID, 'image').send_keys(str(image))
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, '#try-table tbody td.top1')) == 13)
    top1 = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, '#try-table tbody td.top1')]
    answers = httpx.post(f'{server.url}/predict/widths', content=png, timeout=60,
                         headers={'Content-Type': 'image/png', 'X-SLO-Ms': '10000'}).json()['widths']
    assert top1 == [answer['top5'][0]['label'] for answer in answers] and top1[-1] == label
    errors = [entry for entry in browser.get_log('browser') if entry['level'] == 'SEVERE']
    assert errors == []


def test_the_page_fits_a_phone_without_sideways_scrolling(server, browser):
    browser.set_window_size(390, 844)
    try:
        browser.get(f'{server.url}/')
        WebDriverWait(browser, 60).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, '#profile-table tbody tr')) == 13)
        assert browser.execute_script('return document.documentElement.scrollWidth <= window.innerWidth')
    finally:
        browser.set_window_size(1280, 800)
