"""The interactive app: its session logic, and end to end in a real headless Chromium."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("dash")

from scadv._errors import ScadvInputError
from scadv.app import load, make_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def session():
    """The app's default session: bundled pbmc68k_reduced, classifier and detector trained
    on start (short training)."""
    return load(None, quick=True)


def test_attack_one_cell_gives_probabilities_verdict_and_genes(session):
    cell = session.test_cells()[0]
    res = session.attack("pgd", cell, {"eps": 1.0, "steps": 10, "norm": "linf"})
    assert res.proba_before.sum() == pytest.approx(1, abs=1e-5)
    assert res.proba_after.sum() == pytest.approx(1, abs=1e-5)
    assert res.pred_before == session.adata.obs.loc[cell, "scadv_pred"]
    assert res.detector is not None and 0 <= res.detector["score_after"] <= 1
    assert "Detector 'meta'" in res.verdict()
    # L∞ PGD moves every gene by at most ε; the table lists the largest moves first
    assert res.n_genes_moved > 0
    assert np.abs(res.genes["change"]).max() <= 1.0 + 1e-5
    assert list(np.abs(res.genes["change"])) == sorted(np.abs(res.genes["change"]),
                                                       reverse=True)
    real = session.attack("pgd", cell, {"eps": 1.0, "keep_zeros": True, "clip_observed": True})
    assert real.n_genes_moved < res.n_genes_moved  # unexpressed genes stay put
    with pytest.raises(ScadvInputError, match="no cell named"):
        session.attack("pgd", "nope", {"eps": 0.5})
    assert "app" not in session.adata.uns["scadv"]  # attacks run on copies


def test_gene_level_attack_of_one_cell(session):
    cell = session.test_cells()[0]
    before = session.adata.obs.loc[cell, "scadv_pred"]
    res = session.attack("genes", cell, {"max_genes": 200, "alpha": 0.5, "eps": 0.5})
    assert res.pred_before == before
    assert res.proba_after.sum() == pytest.approx(1, abs=1e-5)
    # CGD modifies a few genes, one at a time, and the table lists them first
    assert 0 < res.n_genes_moved <= 200
    moved = np.abs(res.genes["change"].to_numpy()) > 1e-6
    assert moved[:res.n_genes_moved].all() and not moved[res.n_genes_moved:].any()
    if res.flipped:  # switched to the most likely other class
        assert res.pred_after != before
    assert res.detector is not None and "Detector 'meta'" in res.verdict()
    other = next(c for c in session.classes if c != before)
    aimed = session.attack("genes", cell, {"max_genes": 200, "alpha": 0.5, "eps": 0.5,
                                           "target": other})
    assert not aimed.flipped or aimed.pred_after == other
    with pytest.raises(ScadvInputError, match="max_genes must be a positive number"):
        session.attack("genes", cell, {"max_genes": 0})
    assert "app" not in session.adata.uns["scadv"]  # attacks run on copies


def test_whole_test_set_evaluation(session):
    table = session.evaluate(0.5, {"steps": 5})
    total = table.iloc[-1]
    assert total["class"] == "all test cells"
    assert total["cells"] == len(session.test_cells())
    assert 0 < total["flip_rate"] <= 1
    assert {"flipped flagged", "clean flagged"} <= set(table.columns)


def test_never_writes_the_users_file(session, tmp_path):
    path = tmp_path / "mine.h5ad"
    session.adata.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    s = load(path)
    s.attack("pgd", s.test_cells()[0], {"eps": 0.5})
    s.evaluate(0.5, {"steps": 3})
    with pytest.raises(ScadvInputError, match="never overwrites"):
        s.save(path)
    with pytest.raises(ScadvInputError, match="must end in .h5ad"):
        s.save(tmp_path / "x.csv")
    assert s.save(tmp_path / "new.h5ad").exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@pytest.fixture(scope="module")
def server(session):
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, make_app(session).server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    selenium = pytest.importorskip("selenium")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_click_a_cell_attack_it_and_read_the_verdict(server, browser, session):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.perf_counter()
    wait = WebDriverWait(browser, 60)
    browser.get(server)
    points = wait.until(EC.presence_of_all_elements_located(
        (By.CSS_SELECTOR, "#umap .scatterlayer .trace .points path")))
    assert len(points) >= session.adata.n_obs
    before = browser.find_element(By.ID, "cell-name").get_attribute("value")
    # click cells until one that is not the preselected one is picked
    for point in points[len(points) // 2:]:
        ActionChains(browser).move_to_element(point).pause(0.2).click().perform()
        try:
            WebDriverWait(browser, 5).until(
                lambda d: d.find_element(By.ID, "cell-name").get_attribute("value") != before)
            break
        except Exception:  # a point hidden under another: try the next one
            continue
    picked = browser.find_element(By.ID, "cell-name").get_attribute("value")
    assert picked != before and picked in session.adata.obs_names
    wait.until(EC.text_to_be_present_in_element((By.ID, "selected-cell"), picked))
    browser.find_element(By.ID, "run").click()
    verdict = wait.until(EC.presence_of_element_located((By.ID, "verdict-text"))).text
    assert verdict.startswith(f"{picked}: ")
    assert "Detector 'meta'" in verdict and ("FLAGGED" in verdict or "passed" in verdict)
    wait.until(EC.visibility_of_element_located((By.ID, "proba")))
    bars = browser.find_elements(By.CSS_SELECTOR, "#proba .bars path")
    assert len(bars) >= 2
    print(f"browser test: {time.perf_counter() - start:.1f} s")
