"""The HTML report: sections, self-containment, percent tables, input kinds, a browser.

One small fit (module fixture) serves the fit-report tests; the study tests use a tiny
``run_study`` folder (a few seconds) and a hand-made folder.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.fit.fitfile import save_fit
from llmnas_transfer.fit.inference import fit_runs
from llmnas_transfer.io.runs import runs_from_simulation
from llmnas_transfer.summarize import posterior
from llmnas_transfer.summarize import report as rp
from llmnas_transfer.summarize.figures import FIGURE_NAMES

FIT_SECTIONS = ("Data summary", "Diagnostics", "Transfer gaps", "Trajectories and forecasts",
                "Checks")
STUDY_SECTIONS = ("Study", "Targets", "Tables", "Figures")
# every src= or href= value (quoted or not)
_REF = re.compile(r"""\b(?:src|href)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)


def assert_self_contained(page: str, sections) -> None:
    """Each section heading, no external reference, every image a data: URI."""
    for title in sections:
        assert f"<h2>{title}</h2>" in page, title
    refs = ["".join(m) for m in _REF.findall(page)]
    assert refs, "the page has no links or images at all"
    for ref in refs:
        assert not re.match(r"\s*(https?:)?//", ref, re.I), f"external reference {ref[:80]}"
        assert ref.startswith(("#", "data:")), ref[:80]
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert imgs
    for tag in imgs:
        assert re.search(r'\bsrc="data:image/png;base64,[A-Za-z0-9+/=]+"', tag), tag[:80]
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert "@import" not in page and "url(" not in page


# ------------------------------------------------------------------ fast: helpers
def test_html_table_escapes_and_shows_fractions_in_percent():
    df = pd.DataFrame({"dataset": ["<b>x</b>"], "validity_mean": [0.5], "n_trials": [3],
                       "protocol_z": [1.25], "met": [True],
                       "paper_value": pd.Series(["[0.1, 0.2]"], dtype=object)})
    t = rp.html_table(df)
    assert "&lt;b&gt;x&lt;/b&gt;" in t and "<b>x</b>" not in t
    assert "validity mean (%)" in t and "<td>50.0</td>" in t
    assert "n trials</th>" in t and "<td>3</td>" in t  # a count stays a count
    assert "protocol z</th>" in t and "<td>1.250</td>" in t  # a z-score is no fraction
    assert ">yes<" in t
    assert "paper value (%)" in t and "[10, 20]" in t


@pytest.mark.parametrize(("name", "fraction"), [
    ("validity_gap", True), ("hdi94_low", True), ("p_hard", True), ("ci_high", True),
    ("accuracy_q05", True), ("observed_rate", True), ("n_valid", False),
    ("protocol_z", False), ("p_value", False), ("iteration", False), ("large_trials", False),
    ("dataset", False),
])
def test_fraction_columns(name, fraction):
    assert rp.is_fraction_column(name) is fraction


def test_gaps_figure_draws_every_component_it_is_given():
    rows = []
    for comp in ("validity", "accuracy", "combined", "trend"):  # a new component too
        for d, seen in (("cifar-10", True), ("nlp-sst2", False)):
            rows.append({"dataset": d, "task": "classification", "component": comp,
                         "mean": 0.1, "hdi_low": 0.0, "hdi_high": 0.2, "observed": seen})
    fig = rp.gaps_figure(pd.DataFrame(rows), ci=0.9)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["validity gap", "accuracy gap", "combined gap", "trend gap"]
    assert fig.axes[0].get_xlabel() == "gap relative to the reference (%)"


def test_report_kind_and_output_path(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "fit.nc").write_bytes(b"")
    assert rp.report_kind(tmp_path) == "study"
    assert rp.report_kind(tmp_path / "fit.nc") == "fit"
    with pytest.raises(UserInputError, match="notes.txt: not a fit file"):
        rp.report_kind(tmp_path / "notes.txt")
    with pytest.raises(UserInputError, match="missing.nc: not found"):
        rp.report_kind(tmp_path / "missing.nc")
    with pytest.raises(UserInputError, match=r"must end in \.html"):
        rp.check_report_path(tmp_path / "r.pdf")
    with pytest.raises(UserInputError, match="is a folder"):
        (tmp_path / "d.html").mkdir()
        rp.check_report_path(tmp_path / "d.html")


def _fake_study(folder):
    """A study-like folder: tables (one with a text paper value) and one PNG figure."""
    from matplotlib.figure import Figure

    (folder / "tables").mkdir(parents=True)
    (folder / "figures").mkdir()
    pd.DataFrame({"dataset": ["svhn"], "task": ["classification"], "validity_gap": [0.25],
                  "regime": ["hard"], "combined_gap_se": [0.01]}).to_csv(
        folder / "tables" / "gaps.csv", index=False)
    pd.DataFrame({"target": ["a", "b"], "paper_value": ["0.765", "[0.1, 0.2]"],
                  "simulated_value": [0.75, 0.15], "protocol_z": [0.5, -1.0],
                  "met": [True, False]}).to_csv(folder / "tables" / "targets.csv", index=False)
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1])
    fig.savefig(folder / "figures" / "fig1_demo.png")
    (folder / "figures" / "fig1_demo.pdf").write_bytes(b"%PDF")  # not embedded
    (folder / "study.json").write_text(
        '{"seed": 0, "datasets": ["svhn"], "notes": ["a <note>"], "num_trials": 3}')


def test_study_report_of_a_hand_made_folder(tmp_path):
    _fake_study(tmp_path / "s")
    page = rp.study_report_html(tmp_path / "s")
    assert_self_contained(page, STUDY_SECTIONS)
    assert page.count("<img ") == 1
    assert "validity gap (%)" in page and "<td>25.0</td>" in page
    assert "<td class=\"text\">76.5</td>" in page and "[10, 20]" in page  # paper values
    assert "protocol z</th>" in page and "<td>0.500</td>" in page
    assert "a &lt;note&gt;" in page
    assert page.index("<h2>Targets</h2>") < page.index("<h3>gaps")


def test_folder_that_is_no_study_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="not a study folder"):
        rp.study_report_html(tmp_path)


def test_write_report_leaves_nothing_when_building_fails(tmp_path, monkeypatch):
    _fake_study(tmp_path / "s")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(rp, "study_report_html", boom)
    with pytest.raises(RuntimeError, match="boom"):
        rp.write_report(tmp_path / "s", tmp_path / "out" / "r.html")
    assert not list((tmp_path / "out").iterdir())  # no report, no temporary file


# ------------------------------------------------------------------ a real study folder
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    from llmnas_transfer.study.reproduce import run_study

    out = tmp_path_factory.mktemp("study") / "run"
    run_study(0, out_dir=out, num_trials=2, num_iterations=3, num_candidates=4,
              datasets="cifar-10,svhn", tasks="classification", check_trials=0)
    return out


def test_study_report_of_a_reproduce_folder(study_dir, tmp_path):
    out = rp.write_report(study_dir, tmp_path / "study.html")
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page, STUDY_SECTIONS)
    pngs = list((study_dir / "figures").glob("*.png"))
    assert page.count("<img ") == len(pngs) == len(FIGURE_NAMES)
    for name in ("validity", "accuracy", "gaps"):
        assert f"<h3>{name} (tables/{name}.csv)</h3>" in page
    assert "validity mean (%)" in page and "combined gap (%)" in page
    assert "No targets table" in page  # a partial grid has none


# ------------------------------------------------------------------ a real fit
@pytest.fixture(scope="module")
def fit_file(tmp_path_factory):
    sim = simulate(5, datasets="cifar-10,svhn", tasks="classification,detection",
                   num_trials=3, num_iterations=3, num_candidates=10, per_candidate=True,
                   bins=0)
    dt = fit_runs(runs_from_simulation(sim, novelty=False), chains=2, draws=30, warmup=30,
                  seed=2, forecast=2, datasets=["nlp-sst2"], prior_draws=10)
    return save_fit(dt, tmp_path_factory.mktemp("fit") / "fit.nc")


@pytest.mark.slow
def test_fit_report_sections_and_tables(fit_file):
    page = rp.fit_report_html(fit_file)
    assert_self_contained(page, FIT_SECTIONS)
    assert "<title>llmnas-transfer report: fit.nc</title>" in page
    assert page.count("<img ") == 2  # gaps, trajectories
    for comp in ("validity", "accuracy", "combined"):
        assert f"<h3>{comp} gap</h3>" in page
    assert "hdi94 low (%)" in page and "p hard (%)" in page
    assert "94% HDI" in page
    assert "nlp-sst2 / classification" in page or "nlp-sst2" in page  # hierarchy setting
    assert "Forecasts (94% HDI)" in page
    assert "r hat" in page and "divergences" in page
    assert "PSIS-LOO" in page and "replicated mean (%)" in page


@pytest.mark.slow
def test_fit_report_shows_new_gap_components(fit_file, monkeypatch):
    """A component the gap table gains (e.g. ``trend``) appears without changes here."""
    original = posterior.posterior_gaps

    def with_trend(dt, **kwargs):
        df = original(dt, **kwargs)
        extra = df[df["component"] == "validity"].assign(component="trend")
        return pd.concat([df, extra], ignore_index=True)

    monkeypatch.setattr(posterior, "posterior_gaps", with_trend)
    page = rp.fit_report_html(fit_file, ci=0.9)
    assert "<h3>trend gap</h3>" in page
    assert "hdi90 low (%)" in page and "90% HDI" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def assert_browser_renders(page_path, title: str, profile) -> None:
    """Headless Chromium loads the page (no network, no console errors) and shows ``title``."""
    res = subprocess.run(
        [_chromium(), "--headless=new", "--disable-gpu", "--no-sandbox",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"<title>{title}</title>" in res.stdout
    bad = [line for line in res.stderr.splitlines()
           if "Uncaught" in line or ("CONSOLE(" in line and "ERROR" in line.upper())
           or "net::ERR" in line]
    assert not bad, bad


NO_CHROMIUM = pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (the "
                                 "CI installs it with apt-get where it can)")


@NO_CHROMIUM
def test_headless_chromium_renders_the_study_report(study_dir, tmp_path):
    out = rp.write_report(study_dir, tmp_path / "study.html")
    assert_browser_renders(out, f"llmnas-transfer report: {study_dir.name}",
                           tmp_path / "profile")


@NO_CHROMIUM
@pytest.mark.slow
def test_headless_chromium_renders_the_fit_report(fit_file, tmp_path):
    out = rp.write_report(fit_file, tmp_path / "fit.html")
    assert_browser_renders(out, "llmnas-transfer report: fit.nc", tmp_path / "profile")


def test_numbers_in_the_page_are_finite_text():
    # NaN and infinities become blanks or words, never a broken cell
    t = rp.html_table(pd.DataFrame({"mean": [np.nan, np.inf, 0.1]}))
    assert "<td></td>" in t and "<td>inf</td>" in t and "<td>10.0</td>" in t
