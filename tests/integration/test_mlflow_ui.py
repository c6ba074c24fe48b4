"""The MLflow UI in a real browser: the quickstart study runs against the local stack (`study stack
up`: MLflow with basic auth, PostgreSQL, S3, a Ray head), then headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium) opens the UI the way a researcher would:
it switches MLflow 3 from its GenAI mode to Model training and closes the GenAI assistant panel
(which MLflow opens by itself on a local server's first visit). The test asserts from the page:
the study's experiment is listed, its parent run holds the trial runs, the compare view shows the
trials with model, prior, K, lr and validation loss and its parallel-coordinates plot has the axes
prior, K, lr and best_val_loss (not MLflow's default `beta`, the warm-up weight), and the
registered models carry the alias `champion`. Screenshots go to test-artifacts/mlflow-ui/; the
compare view's is also the README's docs/images/mlflow-ui-compare.png."""
from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers import REPO, json_out, study

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-artifacts" / "mlflow-ui"
README_SHOT = REPO / "docs" / "images" / "mlflow-ui-compare.png"
#: The browser's viewport: the compare view's plot, its runs and their differing params in one image.
VIEWPORT = (1600, 1300)
#: The parallel-coordinates axes of the README's image: the searched params (K next to prior: the
#: standard prior's trials have no K, which MLflow draws just above the largest K) and the study's
#: objective, the best validation loss of each trial (MLflow colours the lines by the last axis).
PLOT_PARAMS, PLOT_METRIC = ("prior", "K", "lr"), "best_val_loss"
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
WAIT = 60


@pytest.fixture
def browser(tmp_path: Path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: this test needs Debian's Chromium and its WebDriver "
                    "(apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
                     f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # the window size includes the browser's frame: the viewport (what a screenshot shows) is set exactly
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def quickstart(tmp_path: Path, data_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """The local stack with the quickstart study run against it; yields (stack env, study result)."""
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "stack"
    home = {"STUDY_HOME": str(tmp_path / "studies")}
    up = study("stack", "up", "--folder", folder, "--json", env=home, timeout=180)
    assert up.returncode == 0, up.stderr[-4000:]
    try:
        env = json.loads(up.stdout)["env"]
        result = json_out(study("run", REPO / "search_spaces" / "quickstart.yaml", "--json", timeout=600,
                                env={**env, **home, "STUDY_CACHE_DIR": str(data_cache), "STUDY_DATA_MIRROR": ""}))
        yield env, result
    finally:
        study("stack", "down", "--folder", folder, "--purge", env=home, timeout=180)


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_for_text(driver, *texts: str, timeout: float = WAIT) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: all(t in _text(d) for t in texts),
                                         f"the page never showed {texts}")
    return _text(driver)


def _clickable(driver, xpath: str, timeout: float = WAIT):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)),
                                                f"nothing clickable at {xpath}")


def _assistant_panel(driver) -> list:
    """The GenAI assistant's chat panel, if shown (its close button, in MLflow 3.17)."""
    from selenium.webdriver.common.by import By

    close = "[data-component-id='mlflow.assistant.chat_panel.close']"
    return [e for e in driver.find_elements(By.CSS_SELECTOR, close) if e.is_displayed()]


def _storage(driver, key: str):
    value = driver.execute_script("return window.localStorage.getItem(arguments[0])", key)
    return None if value is None else json.loads(value)


def _select(label: str) -> str:
    """The XPath of the multi-select under `label` ("Parameters:", "Metrics:") in the compare view's
    plot controls."""
    return f"//div[normalize-space(text())='{label}']/following-sibling::div[contains(@class, '-select-multiple')][1]"


def _choose(driver, label: str, key: str) -> None:
    """Add `key` to the multi-select under `label` as a user does: type into it, click the option."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = _clickable(driver, _select(label))
    box.click()
    search = box.find_element(By.TAG_NAME, "input")
    search.send_keys(key)
    _clickable(driver, f"//div[contains(@class, '-select-item-option') and @title='{key}']", timeout=10).click()
    search.send_keys(Keys.ESCAPE)  # closes the list, which covers the controls below it


def _chosen(driver, label: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(
        By.XPATH, f"{_select(label)}//span[contains(@class, '-select-selection-item-content')]")]


def _plot_axes(driver) -> list[str]:
    """The parallel-coordinates plot's axis titles, left to right (plotly's SVG)."""
    return driver.execute_script("return Array.from(document.querySelectorAll("
                                 "'.pcp-plot .parcoords .y-axis .axis-heading .axis-title')).map(e => e.textContent)")


def _shot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def test_mlflow_ui_shows_the_study(quickstart, browser):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    env, result = quickstart
    uri = env["MLFLOW_TRACKING_URI"]
    import os

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update({k: env[k] for k in saved})
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("quickstart")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    trials = [r for r in runs if r.data.tags.get("vamp.role") == "trial"]
    assert len(trials) == 8

    # The UI is behind basic auth: every request of the browser carries the header.
    token = base64.b64encode(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})

    # the experiments list. MLflow 3 opens in its GenAI mode, and on a local server's first visit
    # it opens its assistant's chat panel over a third of the page: close it and switch to Model
    # training, as a user does (MLflow keeps both in localStorage, so they hold on every page).
    browser.get(f"{uri}/#/experiments")
    _wait_for_text(browser, "Experiments", "quickstart")
    _clickable(browser, "//button[@data-component-id='mlflow.assistant.chat_panel.close']").click()
    WebDriverWait(browser, WAIT).until(lambda d: not _assistant_panel(d), "the assistant panel did not close")
    _clickable(browser, "//div[@role='button'][.//span[text()='Model training']]").click()
    _wait_for_text(browser, "Model registry")  # the Model training sidebar
    assert _storage(browser, "mlflow.workflowType_v1") == "machine_learning"
    assert _storage(browser, "mlflow.assistant.panelOpen_v1") is False
    assert "MLflow Assistant" not in _text(browser)
    _shot(browser, "1-experiments")

    # the runs table: the parent run, expanded, holds the trial runs
    browser.get(f"{uri}/#/experiments/{experiment.experiment_id}/runs")  # Model training: a runs table
    _wait_for_text(browser, "quickstart", "9 matching runs")
    trial_names = [t.info.run_name for t in trials]
    assert not any(name in _text(browser) for name in trial_names)  # nested, collapsed
    expander = WebDriverWait(browser, WAIT).until(ec.element_to_be_clickable((
        By.XPATH, "//div[@role='gridcell'][.//a//span[text()='quickstart']]"
                  "//button[contains(@data-component-id, 'runnamecellrenderer')]")))
    expander.click()
    _wait_for_text(browser, *trial_names)
    _shot(browser, "2-runs-nested")

    # the compare view of the trials: model, prior, K, lr and the validation loss
    ids = json.dumps([t.info.run_id for t in trials])
    browser.get(f"{uri}/#/compare-runs?runs={urllib.parse.quote(ids)}"
                f"&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}")
    text = _wait_for_text(browser, "Comparing 8 Runs", "Parameters", "Metrics", *trial_names)
    lines = text.splitlines()
    for param in ("model", "prior", "K", "lr"):
        assert any(line.startswith(f"{param} ") for line in lines), f"no row for param {param}"
    assert any(line.startswith("model ") and "vae" in line and "hvae" in line for line in lines)
    assert any(line.startswith("prior ") and "standard" in line and "vampprior" in line for line in lines)
    assert "val_loss" in text and "best_val_loss" in text

    # its parallel-coordinates plot: MLflow draws the first three differing params (K, lr, model)
    # against the first metric (beta); a researcher compares prior, K and lr against the loss
    WebDriverWait(browser, WAIT).until(lambda d: _plot_axes(d), "no parallel-coordinates plot")
    _clickable(browser, "//button[@data-testid='clear-button']").click()
    for param in PLOT_PARAMS:
        _choose(browser, "Parameters:", param)
    _choose(browser, "Metrics:", PLOT_METRIC)
    browser.execute_script("document.activeElement.blur()")  # no focus ring in the image
    WebDriverWait(browser, WAIT).until(lambda d: _plot_axes(d) == [*PLOT_PARAMS, PLOT_METRIC],
                                       f"the plot never showed the axes {[*PLOT_PARAMS, PLOT_METRIC]}")
    chosen = _chosen(browser, "Parameters:"), _chosen(browser, "Metrics:")
    assert chosen == (list(PLOT_PARAMS), [PLOT_METRIC]), f"the plot's controls hold {chosen}"
    assert "beta" not in _plot_axes(browser)
    WebDriverWait(browser, WAIT).until(lambda d: not any(e.is_displayed() for e in d.find_elements(
        By.CSS_SELECTOR, "[class*='-select-dropdown']")), "a select's list stayed open")
    # the runs table below the plot: only the params that differ between the trials
    diff_only = _clickable(browser, "//button[@role='switch'][@aria-label='Parameters - Show diff only']")
    diff_only.click()
    WebDriverWait(browser, WAIT).until(lambda d: diff_only.get_attribute("aria-checked") == "true")
    browser.execute_script("document.activeElement.blur()")
    lines = _text(browser).splitlines()
    assert not any(line.startswith("batch_size ") for line in lines)  # the same in every trial
    assert all(any(line.startswith(f"{p} ") for line in lines) for p in ("model", "prior", "K", "lr"))
    # Model training mode, and no GenAI assistant over the page
    assert _storage(browser, "mlflow.workflowType_v1") == "machine_learning"
    assert not _assistant_panel(browser) and "MLflow Assistant" not in _text(browser)
    text = _text(browser)
    assert "Model registry" in text and "Judges" not in text  # the Model training sidebar, not GenAI's
    shot = _shot(browser, "3-compare")
    README_SHOT.write_bytes(shot.read_bytes())  # the README's image of the MLflow UI

    # the registered models and their champions
    browser.get(f"{uri}/#/models")
    names = [c["name"] for c in result["champions"]]
    assert {"static_mnist-vae-standard", "static_mnist-vae-vampprior"} <= set(names)
    text = _wait_for_text(browser, "Registered Models", *names)
    assert text.count("@ champion") >= len(names)
    _shot(browser, "4-models")
    browser.get(f"{uri}/#/models/static_mnist-vae-vampprior")
    text = _wait_for_text(browser, "static_mnist-vae-vampprior", "Version 1", "@ champion")
    assert "test_ll" in text
    _shot(browser, "5-model-champion")
