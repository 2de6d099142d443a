"""The five study figures: content, labels, uncertainty, files, and lazy matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.sim import registry
from llmnas_transfer.summarize import figures as plotting
from llmnas_transfer.summarize import tables as metrics

TRIALS = 4


@pytest.fixture(scope="module")
def full():
    return simulate(3, num_trials=TRIALS, num_iterations=5, num_candidates=6, per_candidate=True)


@pytest.fixture(scope="module")
def hist_only():
    return simulate(3, num_trials=TRIALS, num_iterations=5, num_candidates=6)


def _labels_ok(fig):
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel() or ax.get_xticklabels(), "x axis unlabelled"
        assert ax.get_title()
    assert any("%" in ax.get_ylabel() for ax in fig.axes)


def test_matplotlib_is_not_imported_by_the_package():
    code = ("import sys, llmnas_transfer, llmnas_transfer.summarize.figures, "
            "llmnas_transfer.study.reproduce;"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_fig1_one_line_and_band_per_dataset(full):
    fig = plotting.plot_validity_trajectories(full)
    _labels_ok(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "Validity rate (%)"
    assert ax.get_xlabel() == "Refinement iteration"
    lines = [ln for ln in ax.get_lines() if ln.get_label() in registry.BUILTIN_DATASET_NAMES]
    assert len(lines) == 8
    assert len(ax.collections) == 8  # one shaded MC band per dataset
    vt = metrics.validity_table(full)
    want = vt[(vt["dataset"] == "audioset") & (vt["task"] == "classification")]
    got = next(ln for ln in lines if ln.get_label() == "audioset").get_ydata()
    np.testing.assert_allclose(got, 100 * want["validity_mean"].to_numpy())
    # the band is mean +- 1.96 SE (clipped to [0, 100])
    band = ax.collections[registry.BUILTIN_DATASET_NAMES.index("audioset")]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(100 * want["ci_high"].max())
    assert ys.min() == pytest.approx(100 * want["ci_low"].min())


def test_fig1_task_and_subset(full):
    fig = plotting.plot_validity_trajectories(full, task="generation", datasets=["svhn"])
    assert "generation" in fig.axes[0].get_title()
    with pytest.raises(UserInputError, match="not in the results"):
        plotting.plot_validity_trajectories(full, task="captioning")
    with pytest.raises(UserInputError, match="not in the results"):
        plotting.plot_validity_trajectories(full, datasets=["mnist"])


def test_task_validity_is_mean_over_image_datasets(full):
    tv = plotting.task_validity(full).set_index("task")
    img = list(registry.IMAGE_DATASET_NAMES)
    final = full["validity_rate"].sel(iteration=5, dataset=img)
    per = final.mean("trial")
    se = final.std("trial", ddof=1) / np.sqrt(TRIALS)
    for t in registry.BUILTIN_TASK_NAMES:
        assert tv.loc[t, "validity_mean"] == pytest.approx(float(per.sel(task=t).mean()))
        want_se = float(np.sqrt((se.sel(task=t) ** 2).sum())) / len(img)
        assert tv.loc[t, "validity_se"] == pytest.approx(want_se)
        assert tv.loc[t, "n_datasets"] == 6
    assert set(tv["averaged_over"].iloc[0].split(",")) == set(img)
    custom = plotting.task_validity(full, average_over=["audioset"]).set_index("task")
    assert custom.loc["generation", "validity_mean"] == pytest.approx(
        float(full["validity_rate"].sel(iteration=5, dataset="audioset",
                                        task="generation").mean()))


def test_fig2_bars_and_caption(full):
    fig = plotting.plot_validity_by_task(full)
    _labels_ok(fig)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_width() == pytest.approx(0.6)]
    tv = plotting.task_validity(full)
    np.testing.assert_allclose([b.get_height() for b in bars], 100 * tv["validity_mean"])
    caption = fig.get_supxlabel()
    assert "unweighted mean over" in caption and "imagenet" in caption
    assert "audioset" not in caption.split("trials")[0]


@pytest.mark.parametrize("which", ["full", "hist_only"])
def test_fig3_violins(which, request):
    ds = request.getfixturevalue(which)
    fig = plotting.plot_accuracy_distributions(ds)
    _labels_ok(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "First-epoch accuracy of valid candidates (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(registry.BUILTIN_DATASET_NAMES)
    assert ("per-candidate" if which == "full" else "histograms") in fig.get_supxlabel()
    # error-bar markers sit at the pooled mean accuracy of each dataset
    pooled = metrics.pooled_accuracy(ds).sel(task="classification")["accuracy_mean"].values
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    np.testing.assert_allclose([m.get_ydata()[0] for m in markers], 100 * pooled, rtol=1e-6)


def test_fig4_components_add_up_and_thresholds_drawn(full):
    gaps = metrics.gaps_table(full, n_boot=50)
    fig = plotting.plot_transfer_gaps(gaps=gaps, thresholds=(0.05, 0.3))
    _labels_ok(fig)
    left, right = fig.axes[:2]
    sub = gaps[(gaps["task"] == "classification") & (gaps["dataset"] != "cifar-10")]
    diamonds = [ln for ln in left.get_lines() if ln.get_marker() == "D"]
    np.testing.assert_allclose(diamonds[0].get_ydata(), 100 * sub["combined_gap"].to_numpy())
    hlines = {round(ln.get_ydata()[0], 6) for ln in left.get_lines()
              if ln.get_linestyle() == "--" and len(set(ln.get_ydata())) == 1}
    assert {5.0, 30.0} <= hlines
    assert [t.get_text() for t in right.get_xticklabels()] == ["segmentation", "detection",
                                                               "generation"]
    with pytest.raises(UserInputError, match="lacks the column"):
        plotting.plot_transfer_gaps(gaps=gaps.drop(columns=["regime"]))
    with pytest.raises(UserInputError, match="needs results"):
        plotting.plot_transfer_gaps()


def test_fig5_annotates_every_cell_and_marks_lowest(full):
    fig = plotting.plot_validity_heatmap(full)
    _labels_ok(fig)
    ax = fig.axes[0]
    assert len(ax.texts) == 32
    mean = 100 * full["validity_rate"].sel(iteration=5).mean("trial")
    assert ax.texts[0].get_text().startswith(f"{float(mean[0, 0]):.1f}")
    assert "$\\pm$" in ax.texts[0].get_text()
    i, k = np.unravel_index(np.argmin(mean.values), mean.shape)  # first of any ties
    label = ax.get_legend().get_texts()[0].get_text()
    d, t = registry.BUILTIN_DATASET_NAMES[i], registry.BUILTIN_TASK_NAMES[k]
    assert label == f"lowest: {d} x {t}"
    assert mean.values[i, k] == mean.values.min()
    assert fig.axes[1].get_ylabel() == "Final validity rate (%)"


def test_study_figures_write_png_and_pdf(full, tmp_path):
    paths = plotting.study_figures(full, tmp_path / "figs")
    names = sorted(p.name for p in paths)
    want = sorted(f"{n}.{ext}" for n in plotting.FIGURE_NAMES for ext in ("png", "pdf"))
    assert names == want
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == want  # no temp files left
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF")
        assert p.stat().st_size > 5000


def test_small_custom_grid_without_reference_or_images(tmp_path):
    ds = simulate(1, datasets="audioset,nlp-sst2", tasks="detection", num_trials=1,
                  num_iterations=2, num_candidates=3)
    # one trial: no SE, figures still render (no bands, no error bars needed)
    plotting.save_figure(plotting.plot_validity_trajectories(ds), tmp_path / "f1")
    tv = plotting.task_validity(ds)
    assert tv["n_datasets"].item() == 2 and np.isnan(tv["validity_se"].item())
    plotting.save_figure(plotting.plot_validity_by_task(ds), tmp_path / "f2")
    plotting.save_figure(plotting.plot_accuracy_distributions(ds), tmp_path / "f3")
    plotting.save_figure(plotting.plot_validity_heatmap(ds), tmp_path / "f5")
    with pytest.raises(UserInputError, match="reference setting"):
        plotting.plot_transfer_gaps(ds)
    assert len(list(tmp_path.iterdir())) == 8


def test_reference_only_grid_gives_a_message_figure():
    ds = simulate(1, datasets="cifar-10", tasks="classification", num_trials=2,
                  num_iterations=2, num_candidates=3)
    fig = plotting.plot_transfer_gaps(ds)
    assert "no transfer gap to show" in fig.axes[0].texts[0].get_text()


def test_paper_values_come_from_targets_file():
    pv = plotting.paper_values()
    assert pv["validity"][("audioset", "classification")] == pytest.approx(0.547)
    assert pv["task_validity"] == pytest.approx(
        {"classification": 0.76, "segmentation": 0.59, "detection": 0.548, "generation": 0.455})


def test_bad_input():
    with pytest.raises(UserInputError, match="xarray.Dataset"):
        plotting.plot_validity_heatmap({"validity_rate": 1})


def test_prepare_output_folder(tmp_path):
    out = plotting.prepare_output_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []
    assert plotting.prepare_output_folder(out) == out  # an existing folder is fine
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserInputError, match="exists and is not a folder"):
        plotting.prepare_output_folder(tmp_path / "f")
    with pytest.raises(UserInputError, match="cannot create the folder"):
        plotting.prepare_output_folder(tmp_path / "f" / "sub")


def test_save_figure_options(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([0, 1])
    loose = plotting.save_figure(fig, tmp_path / "loose", dpi=50)
    tight = plotting.save_figure(fig, tmp_path / "tight", dpi=50, bbox_inches="tight")
    assert [p.name for p in loose] == ["loose.png", "loose.pdf"]
    assert tight[0].stat().st_size < loose[0].stat().st_size  # cropped
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loose.pdf", "loose.png", "tight.pdf", "tight.png"]
