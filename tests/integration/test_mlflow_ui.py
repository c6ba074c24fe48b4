"""The MLflow UI in a real browser: the quickstart study runs against the local stack (`study stack
up`: MLflow with basic auth, PostgreSQL, S3, a Ray head), then headless Chromium (Debian's
`chromium` and `chromium-driver`, driven by Selenium) opens the UI and the test asserts from the
page: the study's experiment is listed, its parent run holds the trial runs, the compare view
shows the trials with model, prior, K, lr and validation loss, and the registered models carry
the alias `champion`. Screenshots go to test-artifacts/mlflow-ui/."""
from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers import REPO, json_out, study

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-artifacts" / "mlflow-ui"
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
                     "--no-first-run", "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
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

    # the experiments list
    browser.get(f"{uri}/#/experiments")
    _wait_for_text(browser, "Experiments", "quickstart")
    _shot(browser, "1-experiments")

    # the runs table: the parent run, expanded, holds the trial runs
    browser.get(f"{uri}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
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
    _shot(browser, "3-compare")  # docs/images/mlflow-ui-compare.png in the README is this one

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
