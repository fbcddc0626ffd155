"""ComfyUI's own web page through the gateway, in a real (headless) chromium driven by selenium.

A gateway over two mock servers serves the page from ``comfyui-frontend-package``; the page
shows the graph editor, loads a custom node's web extension that only one server has, runs
the "Image Generation" template on the cluster (progress and sampling previews reach the
page, the result shows on the Save node), Cancel stops the page's job and not another
client's, and after a reload the queue panel shows the jobs; in multi-user mode the page asks
who you are and saves that user's settings in their folder. Needs Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them); marked ``browser``, run by ``.ci/run``.
Set ``COMFY_CLUSTER_SCREENSHOT_DIR`` to keep the screenshot (README's comes from here).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterator, List

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from comfy_cluster.gateway.auth import add_user
from comfy_cluster.testing import MockComfyServer, wait_until
from comfy_cluster.testing.workflows import txt2img_workflow
from gateway_util import gateway_over

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

MODEL = "v1-5-pruned-emaonly-fp16.safetensors"  # the one the frontend's default graph names
HELLO_JS = (
    "import { app } from '../../scripts/app.js';\n"
    "app.registerExtension({ name: 'cc.hello', setup() { window.__ccHello = 'loaded'; } });\n"
)
# Resources that real ComfyUI 0.3.64 answers 404 to on a fresh start, as the gateway does.
EXPECTED_404 = ("/user.css", "/api/userdata/user.css", "/favicon.ico", "/api/userdata/comfy.templates.json", "/api/userdata?dir=")
# Records the page's websocket events and title changes (read by the test).
HOOK = """
window.__ev = []; window.__titles = [];
for (const t of ['progress', 'execution_start', 'executed', 'execution_success', 'execution_interrupted', 'b_preview'])
  comfyAPI.api.api.addEventListener(t, e => window.__ev.push([t, (e.detail && e.detail.prompt_id) || null]));
// Which node shows the sampling preview (the page files it under the node that runs).
window.__previewNodes = [];
comfyAPI.api.api.addEventListener('b_preview', () => setTimeout(() =>
  window.__previewNodes.push(...Object.keys(app.nodePreviewImages || {})), 0));
new MutationObserver(() => window.__titles.push(document.title))
  .observe(document.querySelector('title'), {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def servers() -> Iterator[List[MockComfyServer]]:
    # Slow enough (0.2 s a sampling step) that a job is seen running; only gpu1 has the pack.
    made = [
        MockComfyServer(name="gpu1", speed=0.05, models=[MODEL], web_extensions={"cc-hello": {"hello.js": HELLO_JS}}),
        MockComfyServer(name="gpu2", speed=0.05, models=[MODEL]),
    ]
    for s in made:
        s.start()
    try:
        yield made
    finally:
        for s in made:
            s.stop()


def _wait(d: Any, script: str, what: str, timeout: float = 90.0) -> Any:
    """Poll a JavaScript expression until it is truthy (the bound only rules out a hang)."""
    return WebDriverWait(d, timeout, poll_frequency=0.2).until(lambda drv: drv.execute_script("return " + script), what)


def _open_page(d: Any, url: str) -> None:
    d.get(url + "/")
    _wait(d, "!!(window.app && window.app.graph && window.comfyAPI && window.__ccHello)", "the page and the server's extension")
    d.execute_script(HOOK)


def _pick_template(d: Any) -> None:
    """A fresh user gets the templates dialog: pick "Image Generation" (ComfyUI's default graph)."""
    card = WebDriverWait(d, 60).until(lambda drv: drv.find_elements(By.XPATH, "//*[normalize-space(text())='Image Generation']"))
    card[0].click()
    _wait(d, "app.graph.nodes.some(n => n.type === 'SaveImage') && !document.querySelector('.p-dialog-mask')", "the template's graph")


def _events(d: Any, kind: str) -> List[Any]:
    return [p for t, p in d.execute_script("return window.__ev") if t == kind]


def _failed_resources(d: Any, url: str) -> List[str]:
    bad = []
    for entry in d.get_log("browser"):
        msg = entry.get("message", "")
        if entry.get("level") == "SEVERE" and msg.startswith(url) and "Failed to load resource" in msg:
            path = msg[len(url) :].split(" ", 1)[0]
            if not path.startswith(EXPECTED_404):
                bad.append(msg)
    return bad


def _screenshot(d: Any, tmp_path: Any, name: str) -> None:
    d.save_screenshot(str(tmp_path / name))
    keep = os.environ.get("COMFY_CLUSTER_SCREENSHOT_DIR")
    if keep:
        shutil.copy(tmp_path / name, os.path.join(keep, name))


def test_page_runs_a_graph_on_the_cluster(browser: Any, servers: List[MockComfyServer], tmp_path: Any) -> None:
    with gateway_over(servers, gateway_kwargs={"user_dir": str(tmp_path / "user")}) as gw:
        _open_page(browser, gw.url)
        # The graph editor: litegraph's canvas and the web page's Run button.
        assert browser.find_element(By.CSS_SELECTOR, "canvas#graph-canvas").is_displayed()
        _pick_template(browser)
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Run']").click()
        _wait(browser, "window.__ev.some(e => e[0] === 'execution_success')", "the run's end")
        [prompt_id] = _events(browser, "execution_success")
        assert sum(len(s.executed_prompt_ids) for s in servers) == 1, "the graph ran on one cluster server"
        assert _events(browser, "progress") and _events(browser, "b_preview"), "progress and sampling previews reached the page"
        titles = browser.execute_script("return window.__titles")
        # "[45%][60%] KSampler": the run's and the running node's progress, from progress_state.
        assert any(t.endswith("%] KSampler") for t in titles), f"the page showed the sampler's progress: {sorted(set(titles))}"
        sampler = browser.execute_script("return String(app.graph.nodes.find(n => n.type === 'KSampler').id)")
        assert set(browser.execute_script("return window.__previewNodes")) == {sampler}, "previews shown on the sampler"
        # The Save node shows the image the server made (loaded through the gateway's /view).
        width = _wait(browser, "(app.graph.nodes.find(n => n.type === 'SaveImage').imgs || []).map(i => i.naturalWidth)[0]", "the result image")
        assert width == 512
        item = requests.get(gw.url + f"/api/history/{prompt_id}").json()[prompt_id]
        assert item["status"]["status_str"] == "success"
        browser.find_element(By.CSS_SELECTOR, "button.queue-tab-button").click()
        _wait(browser, "document.querySelectorAll('.task-item').length >= 1", "the queue panel's job")
        _screenshot(browser, tmp_path, "webui-on-the-cluster.png")
        assert _failed_resources(browser, gw.url) == []


def test_cancel_stops_the_pages_job_only_and_panels_show_jobs_after_reload(browser: Any, servers: List[MockComfyServer], tmp_path: Any) -> None:
    # least_loaded: both jobs must run at once, one per server; warm_models (the default) may
    # rightly keep the page's job waiting for the server that has its checkpoint loaded.
    with gateway_over(servers, gateway_kwargs={"user_dir": str(tmp_path / "user")}, strategy="least_loaded") as gw:
        _open_page(browser, gw.url)
        _pick_template(browser)
        for s in servers:  # both jobs stay running until the cancel is over
            s.pause_jobs()
        other = requests.post(gw.url + "/prompt", json={"prompt": txt2img_workflow(ckpt_name=MODEL, seed=7), "client_id": "another-script"}).json()["prompt_id"]
        wait_until(lambda: any(s.queue_snapshot()[0] for s in servers), 60, message="the other client's job running")
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Run']").click()
        [mine] = _wait(browser, "window.__ev.filter(e => e[0] === 'execution_start').map(e => e[1])", "the page's job running")
        wait_until(lambda: sum(len(s.queue_snapshot()[0]) for s in servers) == 2, 60, message="both jobs running")
        browser.find_element(By.CSS_SELECTOR, "button[aria-label='Cancel current run']").click()
        _wait(browser, "window.__ev.some(e => e[0] === 'execution_interrupted')", "the page's job interrupted")
        assert _events(browser, "execution_interrupted") == [mine]
        for s in servers:
            s.resume_jobs()

        def status(pid: str) -> Any:
            item = requests.get(gw.url + f"/history/{pid}").json().get(pid)
            return item and item["status"]["status_str"]

        assert wait_until(lambda: status(other), 60, message="the other job's end") == "success"
        assert status(mine) == "error"  # ComfyUI's status of an interrupted prompt

        browser.refresh()
        _wait(browser, "!!(window.app && window.app.graph && window.__ccHello)", "the page after a reload")
        browser.find_element(By.CSS_SELECTOR, "button.queue-tab-button").click()
        _wait(browser, "document.querySelectorAll('.task-item').length >= 2", "both jobs in the queue panel")
        shown = browser.execute_script("return Array.from(document.querySelectorAll('.task-item')).length")
        assert shown == 2
        assert _failed_resources(browser, gw.url) == []


def test_multi_user_page_asks_who_you_are_and_keeps_your_settings(browser: Any, servers: List[MockComfyServer], tmp_path: Any) -> None:
    user_dir = tmp_path / "user"
    with gateway_over(servers, gateway_kwargs={"user_dir": str(user_dir), "multi_user": True}) as gw:
        browser.get(gw.url + "/")
        name = WebDriverWait(browser, 60).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "input#new-user-input"))[0]
        assert browser.current_url.endswith("/user-select")
        name.send_keys("Alice")
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Next']").click()
        _wait(browser, "!!(window.app && window.app.graph && window.__ccHello)", "the editor for the new user")
        user_id = browser.execute_script("return localStorage['Comfy.userId']")
        assert json.loads((user_dir / "users.json").read_text()) == {user_id: "Alice"}
        # The page saves its settings as that user (ComfyUI's comfy-user header), in her folder.
        settings = user_dir / user_id / "comfy.settings.json"
        wait_until(lambda: settings.exists() and "Comfy.InstalledVersion" in json.loads(settings.read_text()), 60, message="Alice's settings")
        mine = requests.get(gw.url + "/api/settings", headers={"comfy-user": user_id}, timeout=30).json()
        assert mine["Comfy.InstalledVersion"] == "1.27.10"
        assert not (user_dir / "default").exists()
        assert requests.get(gw.url + "/api/settings", timeout=30).status_code == 401  # no user named


def test_users_sign_in_on_the_login_page_and_see_only_their_own_jobs(browser: Any, servers: List[MockComfyServer], tmp_path: Any) -> None:
    users_file = str(tmp_path / "users.json")
    alice, bob = add_user(users_file, "alice"), add_user(users_file, "bob")
    with gateway_over(servers, gateway_kwargs={"user_dir": str(tmp_path / "user"), "users": users_file}) as gw:
        # bob's job, run by a script with his token: alice must not see it.
        theirs = requests.post(gw.url + "/prompt", json={"prompt": txt2img_workflow(ckpt_name=MODEL, seed=3)}, headers={"Authorization": f"Bearer {bob}"}, timeout=30)
        bobs = theirs.json()["prompt_id"]
        wait_until(lambda: requests.get(gw.url + f"/history/{bobs}", headers={"Authorization": f"Bearer {bob}"}, timeout=30).json(), 60, message="bob's job done")
        browser.get(gw.url + "/")
        field = WebDriverWait(browser, 60).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "input#token"))[0]
        assert "/login?next=" in browser.current_url
        field.send_keys("not-her-token")
        field.submit()
        error = WebDriverWait(browser, 60).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".error"))[0]
        assert error.text.startswith("wrong token")
        assert [m.split(" - ")[0] for m in _failed_resources(browser, gw.url)] == [gw.url + "/login"]  # its 401
        _screenshot(browser, tmp_path, "webui-sign-in.png")
        browser.find_element(By.CSS_SELECTOR, "input#token").send_keys(alice)
        browser.find_element(By.CSS_SELECTOR, "input#token").submit()
        _wait(browser, "!!(window.app && window.app.graph && window.comfyAPI && window.__ccHello)", "the editor after signing in")
        assert browser.current_url == gw.url + "/"
        assert browser.execute_script("return document.cookie") == "", "the session cookie is HttpOnly"
        browser.execute_script(HOOK)
        _pick_template(browser)
        browser.find_element(By.XPATH, "//button[normalize-space(.)='Run']").click()
        _wait(browser, "window.__ev.some(e => e[0] === 'execution_success')", "her run's end (events on her socket)")
        [mine] = _events(browser, "execution_success")
        history = requests.get(gw.url + "/history", headers={"Authorization": f"Bearer {alice}"}, timeout=30).json()
        assert list(history) == [mine], "the page's job is alice's"
        browser.find_element(By.CSS_SELECTOR, "button.queue-tab-button").click()
        _wait(browser, "document.querySelectorAll('.task-item').length >= 1", "the queue panel")
        assert browser.execute_script("return document.querySelectorAll('.task-item').length") == 1, "only her job, not bob's"
        settings = tmp_path / "user" / "alice" / "comfy.settings.json"
        wait_until(lambda: settings.exists() and "Comfy.InstalledVersion" in json.loads(settings.read_text()), 60, message="her settings in her folder")
        failed = _failed_resources(browser, gw.url)
        assert failed == [], "\n".join(failed)
        # A link from another site (a wiki, a chat) brings no SameSite=Strict cookie: the login
        # page asks the gateway from its own origin and goes on to the editor without a token.
        browser.get(f"data:text/html,<a id=go href='{gw.url}/'>the studio's ComfyUI</a>")
        browser.find_element(By.ID, "go").click()
        _wait(browser, "!!(window.app && window.app.graph && window.__ccHello)", "the editor, reached by a link from elsewhere")
        # Signing out: the next page load asks again.
        browser.get(gw.url + "/logout")
        WebDriverWait(browser, 60).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "input#token"))
        browser.get(gw.url + "/")
        WebDriverWait(browser, 60).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "input#token"))
