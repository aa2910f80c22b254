"""``report.html`` in a real headless browser (the system's Chromium, driven by Playwright).

A tiny real `astro train` on real CIFAR-10 images, one class folder named ``<img src=x onerror=alert(1)>``
and one file named ``"><svg onload=alert(2)>.jpg``, writes its report at the end; the page must load from
disk with no console error, no failed request and no dialog, every image must decode, the mistakes
gallery must hold the expected count, and the injected names must show as text. Screenshots are kept
under ``$ASTRO_ARTIFACTS`` (else pytest's tmp folder); their paths are printed in the log.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import as_overrides, one_thread, run_astro  # noqa: F401 (autouse fixture)
from test_audit import make_leaky_folder, real_images

from astrocli.experiments.predictions import read_predictions

EVIL_CLASS = "<img src=x onerror=alert(1)>"
EVIL_FILE = '"><svg onload=alert(2)>.jpg'


def chromium_path() -> str:
    """The system's Chromium (`.ci/run` installs it); in CI its absence fails the test."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium not installed (apt-get install -y chromium); the report's browser test needs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Playwright drives the system binary: no download)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield instance
        instance.close()


def artifact_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("ASTRO_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def open_page(browser, path: Path) -> tuple[object, dict[str, list[str]]]:
    """The page loaded from disk, and what went wrong while loading it."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    problems: dict[str, list[str]] = {"console": [], "failed": [], "dialogs": [], "errors": []}
    page.on("console", lambda m: problems["console"].append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: problems["failed"].append(r.url))
    page.on("pageerror", lambda e: problems["errors"].append(str(e)))
    page.on("dialog", lambda d: (problems["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, problems


def check_page(page, problems: dict[str, list[str]]) -> int:
    """No error of any kind, every image decoded, every confusion link has its target; the image count."""
    assert problems == {"console": [], "failed": [], "dialogs": [], "errors": []}
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert images and all(done and width > 0 for done, width in images)
    dangling = page.evaluate(
        "Array.from(document.querySelectorAll('a[href^=\"#\"]')).filter("
        "a => !document.getElementById(a.getAttribute('href').slice(1))).length"
    )
    assert dangling == 0
    return len(images)


def evil_folder(cifar10_small: Path, root: Path) -> None:
    """The real CIFAR-10 folder with one class renamed to markup and one test file named as markup."""
    shutil.copytree(cifar10_small, root)
    for split in ("train", "test"):
        (root / split / "cat").rename(root / split / EVIL_CLASS)
    first = sorted((root / "test" / "dog").iterdir())[0]
    first.rename(first.with_name(EVIL_FILE))


def test_run_report_in_a_browser(browser, cifar10_small, tmp_path, monkeypatch, capsys) -> None:
    root = tmp_path / "data"
    evil_folder(cifar10_small, root)
    overrides = as_overrides({
        "data.source": "imagefolder", "data.root": root, "data.img_size": 8, "data.num_workers": 0,
        "data.pipeline": "loader", "model.name": "resnet20", "train.epochs": 2, "train.batch_size": 16,
        "train.max_steps_per_epoch": 3, "train.device": "cpu", "output.dir": tmp_path / "runs",
        "output.name": "evil", "output.log": "quiet", "output.plots": False,
    })  # fmt: skip
    code, stdout, err = run_astro(["train", "--recipe", "quickstart", *overrides], monkeypatch, capsys)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "evil"
    report = run_dir / "report.html"
    assert f"report: {report}" in stdout
    preds = read_predictions(run_dir / "predictions.npz")
    rows = preds.rows("test")  # the test split exists, so the page shows it (scored once, never selecting)
    assert len(rows) == 50 and set(preds.split) == {"val", "test"}
    mistakes = int((preds.predicted[rows] != preds.target[rows]).sum())
    header = (run_dir / "predictions.csv").read_text().splitlines()[0]
    assert header == "split,index,key,target,predicted,confidence," + ",".join(f"prob_{i}" for i in range(10))
    page, problems = open_page(browser, report)
    try:
        count = check_page(page, problems)
        assert page.locator("#mistakes-grid figure").count() == min(48, mistakes)
        text = page.inner_text("body")
        assert EVIL_CLASS in text and EVIL_FILE in text  # shown as the characters they are
        assert (
            page.evaluate("document.querySelectorAll('img[src=\"x\"], svg[onload], [onerror]').length") == 0
        )
        assert page.evaluate("document.scripts.length") == 0
        matrix = page.evaluate("Array.from(document.querySelectorAll('.cm td')).map(td => td.innerText)")
        assert sum(int(v) for v in matrix if v.strip()) == len(rows)
        shot = artifact_path(tmp_path, "report-run.png")
        page.screenshot(path=str(shot))
        page.locator("#mistakes").scroll_into_view_if_needed()
        page.screenshot(path=str(shot.with_name("report-run-mistakes.png")))
        with capsys.disabled():  # in the log, even under capture
            print(f"\nreport screenshot: {shot} ({count} images, {mistakes} mistakes)")
    finally:
        page.close()


def test_audit_report_in_a_browser(
    browser, galaxy_sample_dir, cifar10_zip, tmp_path, monkeypatch, capsys
) -> None:
    root = tmp_path / "data"
    truth = make_leaky_folder(root, real_images("galaxy", galaxy_sample_dir, cifar10_zip))
    out = tmp_path / "audit"
    args = [
        "audit",
        "--recipe",
        "quickstart",
        "--output",
        out,
        "data.source=imagefolder",
        f"data.root={root}",
    ]
    assert run_astro([*args, "data.in_chans=3"], monkeypatch, capsys)[0] == 0
    code, stdout, err = run_astro(["report", out / "audit.json", "--max-thumbs", "30"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads((out / "audit.json").read_text())
    page, problems = open_page(browser, out / "report.html")
    try:
        count = check_page(page, problems)
        assert count == 30  # the budget: 15 pairs side by side, the other 5 listed as text
        assert page.locator("#pairs-grid .pair").count() == 15 == len(truth) - 5
        assert "thumbnail(s) left out" in page.inner_text("footer")
        assert len(result["duplicates"]["pairs"]) == len(truth)
        shot = artifact_path(tmp_path, "report-audit.png")
        page.locator("#duplicates").scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
        with capsys.disabled():  # in the log, even under capture
            print(f"\naudit report screenshot: {shot}")
    finally:
        page.close()


def test_report_of_a_cv_is_self_contained(browser, tmp_path, monkeypatch, capsys) -> None:
    """`astro cv` writes its report at the end (out-of-fold predictions of every image); output.report
    false writes none."""
    overrides = as_overrides({
        "data.source": "digits", "data.img_size": 8, "data.num_workers": 0, "data.pipeline": "loader",
        "model.name": "resnet20", "train.epochs": 1, "train.batch_size": 32, "train.max_steps_per_epoch": 2,
        "train.device": "cpu", "output.dir": tmp_path, "output.name": "d", "output.plots": False,
    })  # fmt: skip
    code, stdout, err = run_astro(
        ["cv", "--recipe", "quickstart", "--folds", "2", "-q", *overrides], monkeypatch, capsys
    )
    assert code == 0, err
    report = tmp_path / "d-cv" / "report.html"
    assert report.is_file()
    oof = read_predictions(tmp_path / "d-cv" / "oof.npz")
    page, problems = open_page(browser, report)
    try:
        count = check_page(page, problems)
        assert count <= 300 and page.locator("#folds tr").count() == 2 + 4  # header, 2 runs, mean/std/ci
        mistakes = int((oof.predicted != oof.target).sum())
        assert page.locator("#mistakes-grid figure").count() == min(48, mistakes)
        assert np.isclose(oof.probs.sum(axis=1), 1.0, atol=1e-3).all()
    finally:
        page.close()
    code, _, err = run_astro(["cv", "--recipe", "quickstart", "--folds", "2", "-q", *overrides,
                              "output.name=e", "output.report=false"], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert not (tmp_path / "e-cv" / "report.html").exists() and (tmp_path / "e-cv" / "oof.npz").is_file()
