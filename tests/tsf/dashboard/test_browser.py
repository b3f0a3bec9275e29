"""The dashboard in a real headless chromium against a real site (real VMs for jobs)."""

from __future__ import annotations

import pytest
import pytest_twisted
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from target_system.jobdesc import parse_job
from tests.e2e.conftest import ALICE, BOB
from tests.tsf.dashboard.conftest import log_in, needs_browser
from tests.tsf.rest.conftest import HIDDEN, PUBLIC

pytestmark = [needs_browser]


def _text(element_id: str):
    """A browser step: the text of an element, once the page has it."""
    return lambda driver: WebDriverWait(driver, 30).until(
        ready.presence_of_element_located((By.ID, element_id))).text


def _follow(driver, by: str, value: str) -> None:
    """Click an element that leads to a new page and wait until that page has replaced this one.

    A click returns before the browser has left the old page, so a lookup straight after it may
    still see the old page (the CI failure this guards against).
    """
    old_page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, value).click()
    WebDriverWait(driver, 30).until(ready.staleness_of(old_page))


@pytest_twisted.ensureDeferred
async def test_login_logout_and_a_wrong_password(dash_site, browser):
    _site, _http, dashboard = dash_site
    await browser(lambda d: d.get(dashboard + "/jobs"))
    assert "/login" in await browser(lambda d: d.current_url)  # no session: the login form
    await browser.shot("login")

    def wrong(driver):
        driver.find_element(By.ID, "user").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys("not-her-password")
        driver.find_element(By.ID, "login").click()
        return WebDriverWait(driver, 30).until(
            ready.presence_of_element_located((By.ID, "login-message"))).text

    assert "wrong user name or password" in await browser(wrong)
    assert await browser(log_in(dashboard)) == "alice"
    cookies = await browser(lambda d: {c["name"]: c for c in d.get_cookies()})
    session = cookies["gridvm_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    await browser.shot("jobs")
    await browser(lambda d: d.find_element(By.ID, "logout").click())
    await browser(lambda d: WebDriverWait(d, 10).until(ready.url_contains("/login")))
    await browser(lambda d: d.get(dashboard + "/jobs"))
    assert "/login" in await browser(lambda d: d.current_url)  # the session is gone


@pytest_twisted.ensureDeferred
async def test_catalogue_search_and_image_page(dash_site, browser):
    _site, _http, dashboard = dash_site
    await browser(log_in(dashboard))
    await browser(lambda d: d.get(dashboard + "/images"))
    listed = await browser(_text("images"))
    assert PUBLIC in listed and HIDDEN not in listed  # exactly what REST shows alice

    def search(driver):
        driver.find_element(By.ID, "s-os").send_keys("debian")
        driver.find_element(By.ID, "s-version").send_keys(">=99")
        _follow(driver, By.ID, "search")
        return _text("candidates")(driver), _text("rejected")(driver)

    candidates, rejected = await browser(search)
    assert "no visible image fits" in candidates
    assert PUBLIC in rejected and "OS_VERSION" in rejected  # the why-not
    await browser.shot("search-none")
    await browser(lambda d: d.get(dashboard + "/images?os=debian"))
    assert PUBLIC in await browser(_text("candidates"))
    await browser.shot("search")
    await browser(lambda d: _follow(d, By.CSS_SELECTOR, "#candidates a"))
    assert (await browser(_text("image-ref"))).startswith(PUBLIC)
    assert "debian" in (await browser(_text("meta-semantic"))).lower()
    assert PUBLIC in await browser(_text("lineage"))
    assert "Trust:" in await browser(_text("trust"))
    await browser.shot("image")


def _submit(executable: str, arguments: str):
    def step(driver):
        driver.find_element(By.ID, "executable").send_keys(executable)
        driver.find_element(By.ID, "arguments").send_keys(arguments)
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ready.presence_of_element_located((By.ID, "state")))
        return driver.current_url.rsplit("/", 1)[-1]

    return step


def _until_state(states: tuple[str, ...], timeout: float = 240):
    """Wait, without reloading: the page's live updates must bring the state."""
    def step(driver):
        # the page reloads itself once the job is finished: elements go stale meanwhile
        wait = WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException))
        return wait.until(lambda d: (text := d.find_element(By.ID, "state").text) in states
                          and text)

    return step


@pytest.mark.vm
@pytest_twisted.ensureDeferred
async def test_follow_a_job_live_and_download_its_output(dash_site, browser):
    site, http, dashboard = dash_site
    await browser(log_in(dashboard))
    await browser(lambda d: d.get(dashboard + "/jobs"))
    job_id = await browser(_submit("/bin/echo", "hello from the dashboard"))
    await browser.shot("job-submitted")
    assert await browser(_until_state(("SUCCESSFUL", "FAILED"))) == "SUCCESSFUL"
    await browser(lambda d: WebDriverWait(d, 30).until(
        lambda d: "stdout" in d.find_element(By.ID, "files").text))
    await browser.shot("job-successful")
    assert await browser(_text("exit-code")) == "0"
    assert "<svg" in await browser(
        lambda d: d.find_element(By.ID, "job-timeline").get_attribute("outerHTML"))
    link = await browser(lambda d: d.find_element(
        By.CSS_SELECTOR, "#files a[href$='/files/stdout']").get_attribute("href"))
    body = await browser(lambda d: d.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0]).then(r => r.text()).then(done, e => done('ERR ' + e));", link))
    assert body == "hello from the dashboard\n"
    await browser(lambda d: d.get(dashboard + "/jobs"))
    assert "SUCCESSFUL" in await browser(
        lambda d: d.find_element(By.ID, f"job-{job_id}").text)
    await browser(lambda d: d.get(dashboard + "/instances"))
    assert await browser(lambda d: d.find_element(By.ID, "instances").text)
    assert "of 2" in await browser(_text("capacity"))  # the site's per-user quota
    await browser.shot("instances")
    # The console log, live and after the instance ended (REST and dashboard).
    instance = site.factory.job(job_id, ALICE).instance_id
    await browser(lambda d: d.get(f"{dashboard}/instances/{instance}/log"))
    assert "guest ready" in await browser(_text("console"))
    await browser.shot("console")
    answer = await http("DELETE", f"instances/{instance}?force=true")
    assert answer.status_code == 204
    kept = await http("GET", f"instances/{instance}/log")
    assert kept.status_code == 200 and "guest ready" in kept.text
    assert (await http("GET", f"instances/{instance}/log", user="bob")).status_code == 404


@pytest.mark.vm
@pytest_twisted.ensureDeferred
async def test_abort_a_job(dash_site, browser):
    _site, _http, dashboard = dash_site
    await browser(log_in(dashboard))
    await browser(lambda d: d.get(dashboard + "/jobs"))
    await browser(_submit("/bin/sleep", "600"))
    await browser(lambda d: _follow(d, By.ID, "action-abort"))
    assert await browser(_until_state(("SUCCESSFUL", "FAILED"))) == "FAILED"
    await browser.shot("job-aborted")


@pytest_twisted.ensureDeferred
async def test_another_users_job_is_not_reachable_and_csrf_is_required(dash_site, browser):
    site, _http, dashboard = dash_site
    bobs = site.factory.submit(parse_job({"Executable": "/bin/true"}), BOB, start=False)
    await browser(log_in(dashboard))
    await browser(lambda d: d.get(f"{dashboard}/jobs/{bobs.job_id}"))
    assert await browser(_text("error-reason")) == "NOT_FOUND"
    assert bobs.job_id not in await browser(lambda d: d.get(dashboard + "/jobs") or
                                            d.find_element(By.ID, "jobs").text)
    await browser(lambda d: d.get(f"{dashboard}/jobs/{bobs.job_id}/files/stdout"))
    assert await browser(_text("error-reason")) == "NOT_FOUND"
    await browser.shot("not-yours")
    # A form without its CSRF token (a forged cross-site post) is refused, the job untouched.
    status = await browser(lambda d: d.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0], {method: 'POST', body: new URLSearchParams({})})"
        ".then(r => done(r.status), e => done('ERR ' + e));",
        f"{dashboard}/logout"))
    assert status == 403
    assert await browser(lambda d: d.get(dashboard + "/jobs") or
                         d.find_element(By.ID, "whoami").text) == "alice"
