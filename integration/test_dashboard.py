"""The live dashboard (chapiteau-web) against a real chapiteau, driven in headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (the
Makefile installs them for ``make test``) and selenium (the ``test`` extra).
Set CHAPITEAU_SCREENSHOT to a path to keep the picture docs/dashboard.md shows.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from integration.harness import argv, free_port, kill_tree, wait_until

SLEEPER = "[watcher:sleeper]\ncmd = {python} -c 'import time; time.sleep(1000)'\nnumprocesses = 1\n"
JSON = {"Content_Type": "application/json"}
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,720",
)


def start_web(daemon, *args: str) -> subprocess.Popen:
    """chapiteau-web for ``daemon``; stopped (by pid) by the caller."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chapiteau.ctl.web.main",
            "--endpoint",
            daemon.endpoint,
            "--pubsub",
            daemon.pubsub,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def web(daemon) -> Iterator[Callable[..., str]]:
    """Start chapiteau-web on a free loopback port; yields a factory returning its base URL."""
    started: list[subprocess.Popen] = []

    def start(*args: str, tree=None) -> str:
        tree = tree or daemon(SLEEPER.format(python=sys.executable))
        port = free_port()
        process = start_web(tree, "--port", str(port), *args)
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "serving on 127.0.0.1" in line, line
        return f"http://127.0.0.1:{port}"

    yield start
    kill_tree([process.pid for process in started])
    for process in started:
        process.wait(10)


def request(url: str, method: str = "GET", auth: str | None = None, **headers: str) -> int:
    """The HTTP status of one request (no body sent, the reply read and dropped)."""
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    for name, value in headers.items():
        req.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Debian Chromium through /usr/bin/chromedriver, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chapiteau-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    subprocess.run(["rm", "-rf", profile], check=False)


def texts(driver, selector: str) -> list[str]:
    """The text of every element matching ``selector``, read in one go: the page redraws
    its rows every second, so elements looked up one by one may be gone when read."""
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)"
    return driver.execute_script(script, selector)


def rows(driver) -> list[int]:
    """The pids the page shows for the watcher ``sleeper``."""
    cells = texts(driver, '.watcher[data-watcher="sleeper"] td.pid')
    return sorted(int(text) for text in cells if text)


def sparkline_points(driver) -> int:
    """How many samples the first process's CPU sparkline has."""
    script = "return document.querySelector('svg.spark.cpu polyline').getAttribute('points')"
    return len(driver.execute_script(script).split())


def test_incr_from_the_page_shows_the_new_process(daemon, web, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tree = daemon(SLEEPER.format(python=sys.executable))
    first = tree.call("list", name="sleeper")["pids"]
    browser.get(web(tree=tree))
    wait_until(lambda: rows(browser) == first, timeout=30)

    browser.find_element(
        By.CSS_SELECTOR, '.watcher[data-watcher="sleeper"] button[data-action="incr"]'
    ).click()
    alert = WebDriverWait(browser, 10).until(lambda driver: driver.switch_to.alert)
    assert alert.text == "incr sleeper?"
    alert.accept()

    wait_until(lambda: len(tree.call("list", name="sleeper")["pids"]) == 2, timeout=30)
    both = tree.call("list", name="sleeper")["pids"]
    wait_until(lambda: rows(browser) == both, timeout=30)
    count = browser.find_element(By.CSS_SELECTOR, '.watcher[data-watcher="sleeper"] .count')
    assert count.get_attribute("data-count") == "2"
    # The spawn event came through the live stream.
    wait_until(lambda: "watcher.sleeper.spawn" in browser.find_element(By.ID, "events").text)
    if os.environ.get("CHAPITEAU_SCREENSHOT"):
        wait_until(lambda: sparkline_points(browser) >= 15, timeout=60)
        browser.save_screenshot(os.environ["CHAPITEAU_SCREENSHOT"])


def test_read_only_page_has_no_buttons_and_refuses_actions(daemon, web, browser):
    from selenium.webdriver.common.by import By

    tree = daemon(SLEEPER.format(python=sys.executable))
    url = web("--read-only", tree=tree)
    browser.get(url)
    wait_until(lambda: rows(browser) == tree.call("list", name="sleeper")["pids"], timeout=30)
    assert browser.find_elements(By.CSS_SELECTOR, "button") == []
    assert "read-only" in browser.find_element(By.ID, "mode").text

    status = request(f"{url}/api/watchers/sleeper/incr", "POST", **JSON)
    assert status == 403
    assert len(tree.call("list", name="sleeper")["pids"]) == 1


def test_a_post_without_json_content_type_is_refused(web):
    url = web()
    assert request(f"{url}/api/watchers/sleeper/incr", "POST", Content_Type="text/plain") == 415


def test_with_an_auth_file_every_request_needs_the_credentials(web, workdir: Path):
    auth_file = workdir / "dashboard.auth"
    auth_file.write_text("# operators\nalice:s3cret\n")
    url = web("--auth-file", str(auth_file))
    for path in ("/", "/api/snapshot", "/api/stream", "/static/dashboard.js"):
        assert request(url + path) == 401
        assert request(url + path, auth="alice:wrong") == 401
    assert request(url + "/", auth="alice:s3cret") == 200
    assert request(url + "/api/snapshot", auth="alice:s3cret") == 200
    assert request(f"{url}/api/watchers/sleeper/incr", "POST", **JSON) == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_without_auth_it_refuses_a_non_loopback_address(daemon, host: str):
    process = start_web(daemon(""), "--host", host, "--port", str(free_port()))
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 2
    assert "refusing to serve the dashboard" in output and "--auth-file" in output


def snapshot(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/snapshot", timeout=10) as reply:
        return json.load(reply)


def serves(url: str) -> bool:
    try:
        return request(url + "/") == 200
    except OSError:
        return False


def test_httpd_true_runs_the_dashboard_as_a_watcher_on_the_brokers_socket(daemon):
    port = free_port()
    circus = f"httpd = true\nhttpd_host = 127.0.0.1\nhttpd_port = {port}\nhttpd_read_only = 1\n"
    tree = daemon(SLEEPER.format(python=sys.executable), circus=circus)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: serves(url), timeout=30)

    watchers = {watcher["name"]: watcher for watcher in snapshot(url)["watchers"]}
    assert sorted(watchers) == ["circushttpd", "sleeper"]
    (web,) = watchers["circushttpd"]["processes"]
    assert web["pid"] in tree.call("list", name="circushttpd")["pids"]
    # The socket is the broker's: the dashboard's process inherited it, it did not bind one.
    assert "--fd" in argv(web["pid"])
    assert request(f"{url}/api/watchers/sleeper/incr", "POST", **JSON) == 403
