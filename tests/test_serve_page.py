"""The live page at / in real browsers, Debian's Chromium (driven by Selenium) and Firefox ESR (by Marionette, its own
remote protocol): it updates while requests are sent, answers an uploaded image at every width, shows the profile,
fits a phone, and raises no JavaScript error."""
import gc
import shutil
import threading
import time

import httpx
import pytest

import serving
from serving import Server

pytestmark = pytest.mark.slow


class Chromium:
    """Headless Chromium through chromedriver; its console's SEVERE entries are the errors."""

    def __init__(self, logs):
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        self.by = By
        options = webdriver.ChromeOptions()
        for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,800'):
            options.add_argument(flag)
        options.binary_location = shutil.which('chromium')
        options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
        self.driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which('chromedriver')), options=options)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def all(self, css: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def script(self, source: str):
        return self.driver.execute_script(source)

    def resize(self, width: int, height: int) -> None:
        self.driver.set_window_size(width, height)

    def errors(self, origin: str) -> list:
        return [entry for entry in self.driver.get_log('browser') if entry['level'] == 'SEVERE']

    def quit(self) -> None:
        self.driver.quit()


class Firefox:
    """Headless Firefox ESR through Marionette; the errors are the script errors its console service holds for the
    page's origin (uncaught exceptions, failed scripts)."""

    def __init__(self, logs):
        from marionette_driver.by import By
        from marionette_driver.marionette import Marionette
        self.by = By
        self.driver = Marionette(host='127.0.0.1', port=serving.free_port(), bin=shutil.which('firefox-esr'),
                                 headless=True, gecko_log=str(logs))  # a folder: its log goes there
        self.driver.start_session()
        self.resize(1280, 800)

    def open(self, url: str) -> None:
        self.driver.navigate(url)

    def all(self, css: str) -> list:
        return self.driver.find_elements(self.by.CSS_SELECTOR, css)

    def script(self, source: str):
        return self.driver.execute_script(source)

    def resize(self, width: int, height: int) -> None:
        self.driver.set_window_rect(width=width, height=height)

    def errors(self, origin: str) -> list:
        with self.driver.using_context('chrome'):
            return self.driver.execute_script("""
                const ScriptError = Components.interfaces.nsIScriptError;
                return Services.console.getMessageArray()
                    .filter(m => m instanceof ScriptError && !(m.flags & ScriptError.warningFlag)
                            && m.sourceName.startsWith(arguments[0]))
                    .map(m => m.errorMessage);""", script_args=[origin])

    def quit(self) -> None:
        self.driver.delete_session()
        self.driver.cleanup()
        self.driver = None  # its profile's finaliser runs now, not at the interpreter's exit where it would fail
        gc.collect()


BROWSERS = {
    'chromium': (Chromium, ('chromedriver', 'chromium'), 'apt-get install -y chromium chromium-driver'),
    'firefox': (Firefox, ('firefox-esr',), "apt-get install -y firefox-esr; pip install marionette_driver"),
}


@pytest.fixture(scope='module', params=list(BROWSERS))
def browser(request, tmp_path_factory):
    make, programs, install = BROWSERS[request.param]
    module = {'chromium': 'selenium', 'firefox': 'marionette_driver'}[request.param]
    pytest.importorskip(module)
    if any(shutil.which(program) is None for program in programs):
        pytest.skip(f"no {request.param}: {install}")
    driver = make(tmp_path_factory.mktemp(f'{request.param}-logs'))
    yield driver
    driver.quit()


@pytest.fixture(scope='module')
def server(trained):
    running = Server(trained / 'scala')
    yield running
    running.stop()


def until(condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError('the page did not get there in time')
        time.sleep(0.2)


def text(browser, css: str) -> str:
    found = browser.all(css)
    return found[0].text if found else ''


def test_the_page_is_self_contained(server):
    page = httpx.get(f'{server.url}/').text
    assert '<script>' in page and 'http://' not in page and 'https://' not in page and 'src=' not in page


def test_the_live_panel_follows_the_requests_and_an_image_is_answered_at_every_width(server, browser, trained,
                                                                                     tmp_path):
    png, label = serving.labelled_png(trained)
    browser.open(f'{server.url}/')
    until(lambda: len(browser.all('#profile-table tbody tr')) == 13)
    sending = threading.Event()

    def load():
        while not sending.is_set():
            server.post(png)
            time.sleep(0.02)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        until(lambda: text(browser, '#answered-now') not in ('', '-', '0'))
        assert int(text(browser, '#offered-now')) > 0
        assert len(browser.all('#chart-rate polyline')) >= 2
    finally:
        sending.set()
        thread.join()
    image = tmp_path / 'shoe.png'
    image.write_bytes(png)
    browser.all('#image')[0].send_keys(str(image))
    until(lambda: len(browser.all('#try-table tbody td.top1')) == 13)
    top1 = [cell.text for cell in browser.all('#try-table tbody td.top1')]
    answers = httpx.post(f'{server.url}/predict/widths', content=png, timeout=60,
                         headers={'Content-Type': 'image/png', 'X-SLO-Ms': '10000'}).json()['widths']
    assert top1 == [answer['top5'][0]['label'] for answer in answers] and top1[-1] == label
    assert browser.errors(server.url) == []


def test_the_page_fits_a_phone_without_sideways_scrolling(server, browser):
    browser.resize(390, 844)
    try:
        browser.open(f'{server.url}/')
        until(lambda: len(browser.all('#profile-table tbody tr')) == 13)
        assert browser.script('return document.documentElement.scrollWidth <= window.innerWidth')
    finally:
        browser.resize(1280, 800)
    assert browser.errors(server.url) == []
