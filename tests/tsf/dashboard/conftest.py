"""A real site and a real headless chromium (Debian's, driven by selenium) for the dashboard.

Selenium is blocking: every browser step runs in a thread (``await browser(step)``) while the
reactor serves the site.  Screenshots of each page go below the test's tmp dir.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.tsf.rest.conftest import PASSWORDS, running_site

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="chromium and chromium-driver are not installed")


class Browser:
    """One headless chromium with a fresh profile; ``await browser(step)`` runs
    ``step(driver)`` in a thread and fires with its result."""

    def __init__(self, shots: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="gridvm-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
                     "--window-size=1280,1000"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(60)
        self.shots = shots
        self.shots.mkdir(parents=True, exist_ok=True)

    def __call__(self, step):
        return threads.deferToThread(step, self.driver)

    def shot(self, name: str):
        return threads.deferToThread(self.driver.save_screenshot, str(self.shots / f"{name}.png"))

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest_twisted.async_yield_fixture(scope="module")
async def dash_site(built_images):
    """(service, Http for BASE, the dashboard's URL)."""
    async with running_site(built_images) as (site, http):
        yield site, http, site.http_base.removesuffix("/rest/core") + "/dashboard"


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromium-driver are not installed")
    chromium = Browser(tmp_path / "screenshots")
    yield chromium
    chromium.quit()


def log_in(dashboard: str, user: str = "alice"):
    """A browser step: log in through the form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def step(driver):
        driver.get(dashboard + "/login")
        driver.find_element(By.ID, "user").send_keys(user)
        driver.find_element(By.ID, "password").send_keys(PASSWORDS[user])
        driver.find_element(By.ID, "login").click()
        return WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.ID, "whoami")[0] if d.find_elements(By.ID, "whoami")
            else None).text

    return step
