"""What a person sees, in a real headless Chromium: the html report and the MLflow UI of one study.

One tiny subset study (teacher, one baseline, 2 trials of 2 epochs) runs once against a real
`kdsweep server start`; the tests open its html report from disk (offline: a page that fetched
plotly.js from a CDN would draw nothing) and the server's runs and run pages. Chromium is Debian's
``chromium`` with ``chromium-driver``; where it cannot start the tests skip, and in CI
(KDSWEEP_REQUIRE_SERVICES=1) fail. ``KDSWEEP_SCREENSHOTS=DIR`` saves what the browser showed
(docs/browser-*.png were taken so).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, require_or_skip, run_cli, write_spec

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
WAIT = 60  # seconds for the MLflow UI (a React app) to fetch and draw


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require_or_skip("selenium is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        require_or_skip(f"{CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1800,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages, read per page
    try:
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        require_or_skip(f"chromium cannot start: {str(exc).strip().splitlines()[0]}")
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def served_study(tmp_path_factory, subset_root):
    """A finished subset study logged through a real `kdsweep server start`, and its html report."""
    from kdsweep.tracking.server import healthy

    work = tmp_path_factory.mktemp("browser")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "server.out").open("w")
    server = subprocess.Popen([sys.executable, "-m", "kdsweep", "server", "start", "--port", str(port),
                               "--workers", "1"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not healthy(url):
            assert server.poll() is None and time.monotonic() < deadline, (work / "server.out").read_text()
            time.sleep(0.5)
        recipe = {"epochs": 2, "batch_size": 64, "lr": 0.05}
        spec = write_spec(work / "spec.yaml", subset_root, name="browser", n_trials=2,
                          teacher={"arch": "resnet8", "width": 0.5, "recipe": {**recipe, "epochs": 3}},
                          student={"arch": "resnet8", "width": 0.25, "recipe": recipe})
        # system metrics sampled every 0.1 s (MLflow's own setting), so even these short runs get some:
        # the teacher's 3 epochs take under a second on a quiet 2-core machine once its model is built
        run = run_cli("study", "run", str(spec), "--tracking-uri", url, cwd=work,
                      env={**ONE_THREAD, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.1"})
        assert run.returncode == 0, run.stderr[-3000:]
        html = work / "report.html"
        report = run_cli("report", "browser", "--tracking-uri", url, "--storage", f"sqlite:///{work}/mlruns/optuna.db",
                         "--format", "html", "--out", str(html), cwd=work, env=ONE_THREAD)
        assert report.returncode == 0, report.stderr[-3000:]
        yield {"url": url, "stdout": run.stdout, "html": html}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("KDSWEEP_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"browser-{name}.png"))


def body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def test_html_report_shows_its_tables_and_every_plot(driver, served_study):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(served_study["html"].as_uri())
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script("return document.readyState") == "complete")
    headline = driver.find_element(By.CSS_SELECTOR, "table")
    rows = [r.find_elements(By.TAG_NAME, "td")[0].text for r in headline.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert rows[:2] == ["Teacher", "Student (baseline)"] and re.fullmatch(r"Distilled student \(trial \d+, kd, best by validation; not confirmed\)", rows[2])

    charts = driver.find_elements(By.CSS_SELECTOR, "figure.chart")
    names = {c.get_attribute("data-name") for c in charts}
    assert {"accuracy_per_epoch", "accuracy_vs_params_kd", "optuna_history", "optuna_parallel"} <= names
    for chart in charts:
        name = chart.get_attribute("data-name")
        # plotly drew it: a sized svg with at least one trace holding points (or axes, for parcoords)
        drawn = driver.execute_script(
            "const d = arguments[0].querySelector('.js-plotly-plot');"
            "if (!d || !d._fullData) return null;"
            "const svg = d.querySelector('svg.main-svg'), r = svg ? svg.getBoundingClientRect() : {width: 0};"
            "return [r.width, r.height, d._fullData.length,"
            "        d.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .parcoords .axis').length];", chart)
        assert drawn and drawn[0] > 100 and drawn[1] > 100 and drawn[2] > 0 and drawn[3] > 0, (name, drawn)
    for img in driver.find_elements(By.CSS_SELECTOR, "figure img"):  # figures with no chart: their PNG
        assert driver.execute_script("return arguments[0].naturalWidth", img) > 0, img.get_attribute("alt")

    # hovering a trial shows its number and parameters
    hover = driver.execute_script("return document.getElementById('plot-accuracy_vs_params_kd').data[0].text")
    assert all(re.match(r"trial \d+<br>", t) and "kd.alpha = " in t and "kd.temperature = " in t for t in hover)

    # a click on "test acc %" sorts the top-trials table by it, a second click reverses
    trials = driver.find_elements(By.CSS_SELECTOR, "table")[3]  # headline, best per method, EMA, top trials
    header = trials.find_elements(By.TAG_NAME, "th")
    col = [h.text for h in header].index("test acc %")

    def column() -> list[float]:
        return [float(r.find_elements(By.TAG_NAME, "td")[col].text.split()[0])
                for r in trials.find_elements(By.CSS_SELECTOR, "tbody tr")]

    driver.execute_script("const d = document.getElementById('plot-accuracy_vs_params_kd');"
                          "d.scrollIntoView(); Plotly.Fx.hover(d, [{curveNumber: 0, pointNumber: 0}]);")
    screenshot(driver, "report-hover")
    driver.execute_script("window.scrollTo(0, 0)")
    header[col].click()
    assert column() == sorted(column())
    header[col].click()
    assert column() == sorted(column(), reverse=True)

    screenshot(driver, "report")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_mlflow_ui_lists_runs_by_role_with_dataset_and_model(driver, served_study):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = served_study["url"]
    printed = re.search(r"^runs: (\S+)$", served_study["stdout"], re.M)
    assert printed, served_study["stdout"]
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("browser")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert printed.group(1).startswith(f"{url}/#/experiments/{exp.experiment_id}/runs")
    runs = {r.data.tags["role"]: r for r in client.search_runs([exp.experiment_id])}
    # on by default against a server: the teacher's run (the longest here) sampled CPU and memory
    assert runs["teacher"].data.metrics["system/system_memory_usage_megabytes"] > 0
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id], "tags.role != 'study'"))
    assert names == ["baseline-resnet8-x0.25-s0", "distilled-t0-s0", "distilled-t1-s0", "teacher-resnet8-x0.5-s0"]

    driver.get(printed.group(1))
    wait = WebDriverWait(driver, WAIT)
    wait.until(lambda d: "browser" in body_text(d) and "matching runs" in body_text(d))
    # the study's parent run holds the others: open it
    expand = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[role=gridcell] button[data-component-id*="
                                                                 "runnamecellrenderer]"))
    expand[0].click()
    wait.until(lambda d: all(n.replace(".", "_") in body_text(d) for n in names))  # no "." in model names
    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):  # the assistant panel
        close.click()
    assert "cifar10-train" in body_text(driver)  # the Dataset column
    screenshot(driver, "runs")

    distilled = runs["distilled"]
    driver.get(f"{url}/#/experiments/{exp.experiment_id}/runs/{distilled.info.run_id}?workflowType=machine_learning")
    wait.until(lambda d: "cifar10-test" in body_text(d) and "cifar10-train" in body_text(d))
    model = client.search_logged_models([exp.experiment_id],
                                        filter_string=f"source_run_id = '{distilled.info.run_id}'")[0]
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"a[href*='{model.model_id}']"))
    screenshot(driver, "run")

    # the Models tab: every role's logged model, with its final test accuracy
    driver.get(f"{url}/#/experiments/{exp.experiment_id}/models?workflowType=machine_learning")
    wait.until(lambda d: all(n.replace(".", "_") in body_text(d) for n in names))  # no "." in model names
    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):  # the assistant panel
        close.click()
    wait.until(lambda d: "final_test_acc" in body_text(d) and "cifar10-test" in body_text(d))
    screenshot(driver, "models")
