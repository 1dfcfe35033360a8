"""Drives tracerd's web page in a real headless Chromium (Selenium, the system chromedriver).

Run by tests/tests/browser.rs with a daemon that has tokens: sign in with the token, create a
session on a cgroup from the form, start it, open its page, run the workload in the cgroup,
watch the live rows and per-syscall counts arrive, stop it and delete it — by keyboard, as
far as a user without a mouse would. Saves screenshots of the main views, fails on any
console error, and checks a narrow window scrolls no page sideways.

Usage: ui_test.py URL TOKEN CGROUP WORKLOAD CALLS SCREENSHOT_DIR
"""
import os
import subprocess
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

URL, TOKEN, CGROUP, WORKLOAD, CALLS, SHOTS = sys.argv[1:7]
CALLS = int(CALLS)


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                            options=options)


def testid(name):
    return (By.CSS_SELECTOR, f'[data-testid="{name}"]')


def wait(driver, condition, what, seconds=20):
    try:
        return WebDriverWait(driver, seconds).until(condition)
    except TimeoutException:
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
        raise AssertionError(f"timed out waiting for {what}; page text:\n"
                             + driver.find_element(By.TAG_NAME, "body").text)


def press(driver, element, key=Keys.ENTER):
    """Focuses an element and presses a key on it: no mouse."""
    driver.execute_script("arguments[0].focus()", element)
    element.send_keys(key)


def confirm(driver, expected):
    """Accepts the page's confirmation, which must name what it is about."""
    alert = wait(driver, ec.alert_is_present(), "a confirmation")
    assert expected in alert.text, alert.text
    alert.accept()


def run_workload():
    def join_cgroup():
        with open(os.path.join(CGROUP, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
    subprocess.run([WORKLOAD, "getppid", str(CALLS)], preexec_fn=join_cgroup, check=True)


def text_is(locator, expected):
    def check(driver):
        elements = driver.find_elements(*locator)
        return elements and elements[0].text.strip() == expected
    return check


def main():
    os.makedirs(SHOTS, exist_ok=True)
    driver = browser()
    try:
        driver.get(URL)
        # The daemon has tokens: the page asks for one.
        token = wait(driver, ec.visibility_of_element_located(testid("token-input")), "the token prompt")
        token.send_keys(TOKEN)
        token.send_keys(Keys.ENTER)
        form = wait(driver, ec.visibility_of_element_located(testid("create-form")), "the create form")
        driver.save_screenshot(os.path.join(SHOTS, "sessions.png"))

        # Create a session on the cgroup, from the keyboard.
        Select(form.find_element(*testid("target-kind"))).select_by_value("cgroup")
        form.find_element(*testid("session-name")).send_keys("ui-walkthrough")
        form.find_element(*testid("target-value")).send_keys(CGROUP)
        syscalls = form.find_element(*testid("syscalls"))
        syscalls.send_keys("getppid")
        syscalls.send_keys(Keys.ENTER)
        row = wait(driver, ec.presence_of_element_located(
            (By.CSS_SELECTOR, '[data-testid="session-row"][data-session-name="ui-walkthrough"]')),
            "the new session's row")
        session_id = row.get_attribute("data-session-id")
        assert session_id, "the row names its session"

        # Its page, through its link; start it there.
        press(driver, row.find_element(*testid("session-link")))
        start = wait(driver, ec.element_to_be_clickable(testid("start")), "the start button")
        press(driver, start)
        wait(driver, text_is(testid("session-status"), "running"), "the session running")

        run_workload()
        count = (By.CSS_SELECTOR, '[data-testid="syscall-count"][data-syscall="getppid"]')
        wait(driver, text_is(count, str(CALLS)), f"{CALLS} getppid calls counted live", 30)
        wait(driver, text_is(testid("counter-delivered"), str(CALLS)), "the delivered counter", 30)
        rows = driver.find_elements(*testid("event-row"))
        assert rows, "live event rows arrived"
        assert "getppid()" in rows[0].text, rows[0].text
        # The whole page, counts and live rows included, for the docs.
        driver.set_window_size(1280, 1700)
        wait(driver, lambda d: "checking" not in d.find_element(*testid("health")).text,
             "the daemon's health in the header")
        driver.save_screenshot(os.path.join(SHOTS, "session.png"))
        driver.set_window_size(1280, 800)

        # Filters: failed-only hides every (successful) getppid.
        failed = driver.find_element(*testid("filter-failed"))
        press(driver, failed, Keys.SPACE)
        wait(driver, lambda d: not d.find_elements(*testid("event-row")), "failed-only hiding the rows")
        press(driver, failed, Keys.SPACE)

        press(driver, driver.find_element(*testid("stop")))
        wait(driver, text_is(testid("session-status"), "stopped"), "the session stopped")

        press(driver, driver.find_element(*testid("delete")))
        confirm(driver, "ui-walkthrough")
        wait(driver, lambda d: not d.find_elements(
            By.CSS_SELECTOR, f'[data-testid="session-row"][data-session-id="{session_id}"]'),
            "the session gone from the list")

        # A narrow window: nothing wider than the window.
        driver.set_window_size(420, 800)
        time.sleep(0.5)
        width = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] + 1, f"page {width[0]}px wide in a {width[1]}px window"
        driver.save_screenshot(os.path.join(SHOTS, "narrow.png"))

        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        # Nor any the page caught and showed itself.
        shown = driver.find_element(*testid("error")).text.strip()
        assert not shown, f"the page shows an error: {shown}"
        print(f"ok: session {session_id}, {CALLS} calls seen live")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
