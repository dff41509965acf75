"""The review page in a real browser (Debian's chromium + chromedriver, driven by selenium): a run with ~2,000
candidates on a CSV table stops for review; the page filters, sorts and pages them, shows hostile cell values
as text, approves rows by clicking and downloads approvals.csv, which `tda-clean apply` then applies. A second
test opens the run's MLflow parent run in the MLflow UI. Screenshots go to ``$TDA_CLEAN_TEST_ARTIFACTS``
(default: a pytest temporary folder).

Skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing, unless ``TDA_CLEAN_REQUIRE_BROWSER=1``
(set by ``.ci/run``): then they fail. Every process started here (chromedriver, chromium, mlflow server) runs in
its own process group and is killed at the end.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tda_clean.cli import main

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1100"]
HOSTILE = ['<img src=x onerror="document.title=1">', '=HYPERLINK("http://example.invalid","click")']
N_ROWS = 11500


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("TDA_CLEAN_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    path = Path(os.environ.get("TDA_CLEAN_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _table(n: int, seed: int) -> pd.DataFrame:
    """A synthetic customer table: 3 segments driven by income and tenure; a region group column; a referrer
    column with hostile values (HTML and a spreadsheet formula) that the page must show as plain text."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.5, n).round(-2)
    tenure = rng.integers(0, 30, n)
    score = (np.log(income) - 10.5) / 0.5 + (tenure - 15) / 8 + rng.normal(0, 0.3, n)
    segment = np.select([score < -0.6, score < 0.6], ["bronze", "silver"], "gold")
    return pd.DataFrame({
        "income": income, "tenure_years": tenure, "plan": rng.choice(["basic", "plus", "family"], n),
        "referrer": rng.choice(["search", "friend", *HOSTILE], n, p=[0.5, 0.46, 0.02, 0.02]),
        "region": rng.choice(["north", "south", "east", "west"], n), "segment": segment,
    })


@pytest.fixture(scope="module")
def awaiting(tmp_path_factory) -> Path:
    """A run stopped for review with ~2,000 candidates, tracked in ``<root>/mlflow.db``."""
    _require_browser()
    root = tmp_path_factory.mktemp("review-browser")
    _table(N_ROWS, seed=0).to_csv(root / "customers.csv", index=False)
    config = {
        "name": "review-browser", "data": {"kind": "csv", "path": "customers.csv", "label": "segment",
                                           "groups": ["region"]},
        "scenario": {"kind": "uniform_flip", "rate": 0.3}, "model": {"kind": "logistic"},
        "train": {"optimizer": "lbfgs", "l2": 1e-3, "epochs": 30}, "detector": {"kind": "cleanlab", "folds": 3},
        "action": {"kind": "relabel"}, "review": "required",
        "tracking": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "review-browser",
                     "log_models": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(root / "config.yaml"), "--engine", "local", "--output", str(root / "run")]) == 0
    return root


class Browser:
    """Headless chromium under chromedriver, both in one new process group killed by :meth:`close`."""

    def __init__(self, root: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.downloads = root / "downloads"
        self.downloads.mkdir(parents=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS + [f"--user-data-dir={root / 'profile'}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for get_log
        options.add_experimental_option("prefs", {"download.default_directory": str(self.downloads),
                                                  "download.prompt_for_download": False})
        self.service = Service(str(CHROMEDRIVER), log_output=str(root / "chromedriver.log"),
                               popen_kw={"start_new_session": True})
        self.driver = None
        try:
            self.driver = webdriver.Chrome(service=self.service, options=options)
            self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                        {"behavior": "allow", "downloadPath": str(self.downloads)})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        process = getattr(self.service, "process", None)
        try:
            if self.driver is not None:
                self.driver.quit()
        finally:
            if process is not None:
                try:  # chromium and its helpers that outlived quit()
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)


def _wait(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ids(driver) -> list[int]:
    return [int(e.get_attribute("data-row-id")) for e in driver.find_elements("css selector", "#rows > tr")]


def _set(driver, element_id: str, value: str) -> None:
    """Type into an input / choose an option, then fire the ``input`` event the page listens to."""
    driver.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('input'));", element_id, value)


def _info(driver) -> str:
    return driver.find_element("id", "page-info").text


def test_review_page_filters_sorts_and_writes_approvals_apply_reads(awaiting, tmp_path, artifacts):
    run = awaiting / "run"
    candidates = pd.read_csv(run / "review" / "candidates.csv")
    n = len(candidates)
    assert 1500 <= n <= 3000, n
    browser = Browser(tmp_path)
    try:
        driver = browser.driver
        driver.get((run / "review" / "index.html").as_uri())
        _wait(lambda: len(_ids(driver)) == 50, "the first page of 50 candidates")
        assert _info(driver) == f"page 1 of {-(-n // 50)} · {n} of {n} candidates match"
        assert _ids(driver) == candidates["row_id"].tolist()[:50]  # most suspicious first
        assert driver.title == "tda-clean review: review-browser"  # no hostile onerror ran

        # sorting: least suspicious first (ties by rank)
        _set(driver, "sort", "score-asc")
        ascending = candidates.sort_values(["score", "rank"], kind="stable")
        assert _ids(driver) == ascending["row_id"].tolist()[:50]
        _set(driver, "sort", "score-desc")

        # filtering by score, group, action; counts match the CSV
        scores = np.sort(candidates["score"].unique())
        cut = float((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2)
        _set(driver, "f-min", repr(cut))
        assert f"· {(candidates['score'] >= cut).sum()} of {n} candidates match" in _info(driver)
        _set(driver, "f-min", "")
        _set(driver, "f-group", "region=east")
        east = (candidates["group_region"] == "east").sum()
        assert f"· {east} of {n} candidates match" in _info(driver)
        assert set(candidates.set_index("row_id").loc[_ids(driver), "group_region"]) == {"east"}
        group_row = driver.find_element("css selector", '#groups tr[data-group="region=east"]')
        assert group_row.find_elements("css selector", "td")[1].text == str(east)  # per-group count
        _set(driver, "f-group", "")
        kinds = candidates["suggested_action"].str.split().str[0]
        options = [e.get_attribute("value") for e in driver.find_elements("css selector", "#f-action option")]
        assert options == ["", *sorted(set(kinds))]
        _set(driver, "f-action", options[-1])
        assert f"· {(kinds == options[-1]).sum()} of {n} candidates match" in _info(driver)
        _set(driver, "f-action", "")
        _set(driver, "f-decision", "yes")  # nothing approved yet
        assert f"· 0 of {n} candidates match" in _info(driver) and not _ids(driver)
        _set(driver, "f-decision", "")

        # paging
        driver.find_element("id", "next").click()
        assert _info(driver).startswith("page 2 of") and _ids(driver) == candidates["row_id"].tolist()[50:100]
        driver.find_element("id", "prev").click()

        # hostile values are shown as text: no element made from them, the formula text as written
        _set(driver, "f-text", "onerror")
        hostile = [e.text for e in driver.find_elements("css selector", "#rows dd")]
        assert HOSTILE[0] in hostile and not driver.find_elements("css selector", "#rows img:not(.thumb)")
        _set(driver, "f-text", "hyperlink")
        assert HOSTILE[1] in [e.text for e in driver.find_elements("css selector", "#rows dd")]
        time.sleep(0.5)
        assert driver.title == "tda-clean review: review-browser"
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not [m for m in errors if "Uncaught" in m or "Content Security Policy" in m], errors
        _set(driver, "f-text", "")

        # each candidate shows its values and the validation rows it names, with their values
        first = driver.find_element("css selector", "#rows > tr")
        assert "income" in first.text and "tenure_years" in first.text and "val row" in first.text

        # decide by clicking: approve 5, reject 3, reject the rest in bulk, download
        approve = _ids(driver)[:5]
        for i in range(8):  # each click re-renders the rows: find the button again
            driver.find_elements("css selector", f"#rows button.{'approve' if i < 5 else 'reject'}")[i].click()
        assert driver.find_element("id", "download").get_attribute("disabled") == "true"
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(artifacts / "review_page.png"))
        driver.find_element("id", "reject-undecided").click()
        assert driver.find_element("id", "status").text == f"5 approved · {n - 5} rejected · 0 undecided"
        driver.find_element("id", "download").click()
        path = _wait(lambda: next(iter(browser.downloads.glob("approvals*.csv")), None), "approvals.csv download")
        _wait(lambda: not list(browser.downloads.glob("*.crdownload")), "the download to finish")
    finally:
        browser.close()

    decisions = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(decisions.columns[:2]) == ["row_id", "approved"]
    assert decisions["row_id"].astype(int).tolist() == candidates["row_id"].tolist()
    assert set(decisions.loc[decisions["approved"] == "yes", "row_id"].astype(int)) == set(approve)
    assert main(["apply", str(run), "--approved", str(path)]) == 0
    audit = pd.read_csv(run / "audit.csv")
    assert set(audit.loc[audit["action"] == "relabel", "row_id"]) <= set(approve)
    assert (audit["action"] == "keep").sum() >= n - 5
    assert json.loads((run / "report.json").read_text())["status"] == "completed"


def test_mlflow_ui_shows_the_parent_run(awaiting, tmp_path, artifacts):
    """The MLflow UI (mlflow server on the run's SQLite store) opens the run's parent run."""
    from tests.integration.servers import start_mlflow

    parent = json.loads((awaiting / "run" / "tracking.json").read_text())["parent_run_id"]
    from mlflow import MlflowClient

    experiment = MlflowClient(f"sqlite:///{awaiting / 'mlflow.db'}").get_run(parent).info.experiment_id
    server = start_mlflow(awaiting)
    browser = None
    try:
        server.wait_healthy()
        browser = Browser(tmp_path)
        driver = browser.driver
        driver.get(f"{server.url}/#/experiments/{experiment}/runs/{parent}")
        _wait(lambda: parent in driver.find_element("tag name", "body").text, "the parent run page", 120)
        time.sleep(2)  # let the page settle before the picture
        from selenium.common.exceptions import WebDriverException

        for close in driver.find_elements("css selector", 'button[aria-label="Close"]'):  # the assistant side panel
            try:
                close.click()
            except WebDriverException:  # hidden or covered: the picture just keeps the panel
                pass
        driver.save_screenshot(str(artifacts / "mlflow_parent_run.png"))
        body = driver.find_element("tag name", "body").text
        assert "review-browser" in body and "completed" in body  # the run's name and its status tag
    finally:
        if browser is not None:
            browser.close()
        server.stop()
    assert server.proc.poll() is not None


def test_synthetic_page_shows_why_columns_and_hostile_labels_as_text(tmp_path):
    """A frame fed through the same page writer: `why` / `why_image` shown, a missing suggestion shows no arrow
    and no `<NA>`, a label and group made of HTML appear as text."""
    _require_browser()
    from tda_clean.review_page import render_page
    from tests.test_review_page import HOSTILE as LABEL, frame

    pixel = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB"
             "4iG8MwAAAABJRU5ErkJggg==")
    f = frame(3, suggested=False).assign(why=["pixels at the top left", None, None], why_image=[pixel, None, None])
    page = tmp_path / "index.html"
    page.write_text(render_page(f, {}, {}, {"name": "synthetic", "action": "remove", "storage_key": str(page),
                                            "apply_command": "tda-clean apply RUN --approved approvals.csv"}))
    browser = Browser(tmp_path / "browser")
    try:
        driver = browser.driver
        driver.get(page.as_uri())
        _wait(lambda: len(_ids(driver)) == 3, "three candidates")
        rows = driver.find_elements("css selector", "#rows > tr")
        assert "pixels at the top left" in rows[0].text and len(rows[0].find_elements("css selector", ".why img")) == 1
        assert not rows[1].find_elements("css selector", ".why")
        body = driver.find_element("tag name", "body").text
        assert LABEL.replace("\u2028", "").split("&")[0] in body.replace("\n", "")
        assert "<NA>" not in body and driver.title == "tda-clean review: synthetic"
        assert not driver.find_elements("css selector", "#rows .arrow")  # no suggestion: no "→ new label"
        assert not driver.find_elements("css selector", "#rows script, #rows b")
    finally:
        browser.close()
