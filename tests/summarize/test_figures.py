"""The five study figures: content, labels, uncertainty, files, and lazy matplotlib."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
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


def _drawn_texts(fig):
    """The text artists a render of ``fig`` shows (non-empty, visible, ticks in view)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    hidden = set()
    for ax in fig.axes:
        if not ax.axison:
            hidden.update(id(t) for t in ax.xaxis.findobj(Text) + ax.yaxis.findobj(Text))
            continue
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - tol <= tick.get_loc() <= hi + tol:
                    hidden.update((id(tick.label1), id(tick.label2)))
    return [t for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in hidden]


def _overlap(a, b, tol=0.5):
    """Whether two display boxes share more than ``tol`` pixels in both directions."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tol)


def assert_no_overlapping_text(fig):
    """No two drawn text artists of ``fig`` overlap, and every one lies inside the figure."""
    texts = _drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [(t, t.get_window_extent(renderer)) for t in texts]
    page = fig.bbox
    for t, b in boxes:
        assert b.x0 >= page.x0 - 1 and b.x1 <= page.x1 + 1, f"{t.get_text()!r} leaves the figure"
        assert b.y0 >= page.y0 - 1 and b.y1 <= page.y1 + 1, f"{t.get_text()!r} leaves the figure"
    for i, (t, a) in enumerate(boxes):
        for u, b in boxes[i + 1:]:
            assert not _overlap(a, b), f"text {t.get_text()!r} overlaps {u.get_text()!r}"
    return boxes


def _data_boxes(ax):
    """Display boxes of every bar and every error-bar segment and cap of ``ax``."""
    from matplotlib.container import BarContainer, ErrorbarContainer
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    out = []
    for c in ax.containers:
        if isinstance(c, BarContainer):
            out += [("bar", p.get_window_extent(renderer)) for p in c.patches]
        elif isinstance(c, ErrorbarContainer):
            _, caps, cols = c.lines
            for ln in caps:  # one Line2D holds every cap as a marker: box each one
                px = ln.get_markersize() * ax.figure.dpi / 72 / 2
                py = max(ln.get_markeredgewidth(), 1.0) * ax.figure.dpi / 72 / 2
                pts = ln.get_transform().transform(np.column_stack(ln.get_data()))
                out += [("cap", Bbox([[x - px, y - py], [x + px, y + py]]))
                        for x, y in pts if np.isfinite(x) and np.isfinite(y)]
            for col in cols:
                for seg in col.get_segments():
                    pts = col.get_transform().transform(np.asarray(seg))
                    if np.isfinite(pts).all():
                        box = Bbox(pts)
                        clipped = Bbox.intersection(box, ax.bbox)
                        if clipped is not None:
                            out.append(("error bar", clipped))
    return out


def assert_text_clear_of_data(fig, ax):
    """No drawn text of ``fig`` overlaps a bar, an error bar or a cap of ``ax``."""
    boxes = assert_no_overlapping_text(fig)
    data = _data_boxes(ax)
    assert data, "nothing drawn to check against"
    for t, a in boxes:
        for kind, b in data:
            assert not _overlap(a, b), f"text {t.get_text()!r} overlaps a {kind}"


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
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == list(
        registry.BUILTIN_DATASET_NAMES)
    assert ("per-candidate" if which == "full" else "histograms") in fig.get_supxlabel()
    # the chance level of each classification dataset is drawn at 100 / classes
    chance = sorted({round(100 / registry.get_dataset(d).num_classes, 6)
                     for d in registry.BUILTIN_DATASET_NAMES})
    drawn = {round(float(y), 6) for c in ax.collections if hasattr(c, "get_segments")
             for seg in c.get_segments() for y in seg[:, 1]}
    assert set(chance) <= drawn
    # error-bar markers sit at the pooled mean accuracy of each dataset
    pooled = metrics.pooled_accuracy(ds).sel(task="classification")["accuracy_mean"].values
    markers = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    np.testing.assert_allclose([m.get_ydata()[0] for m in markers], 100 * pooled, rtol=1e-6)


@pytest.fixture(scope="module")
def gaps(full):
    return metrics.gaps_table(full, n_boot=50)


def test_fig4_components_side_by_side_and_thresholds_drawn(gaps):
    fig = plotting.plot_transfer_gaps(gaps=gaps, thresholds=(0.05, 0.3))
    _labels_ok(fig)
    left, right = fig.axes[:2]
    sub = gaps[(gaps["task"] == "classification") & (gaps["dataset"] != "cifar-10")]
    bars = [c for c in left.containers if c.__class__.__name__ == "BarContainer"]
    assert len(bars) == 2  # validity and accuracy components, not stacked
    for c, name in zip(bars, ("validity", "accuracy"), strict=True):
        np.testing.assert_allclose([p.get_height() for p in c.patches],
                                   100 * sub[f"{name}_component"].to_numpy())
        assert all(p.get_y() == 0 for p in c.patches)  # every bar starts at zero
    v, a = ([p.get_x() for p in c.patches] for c in bars)
    assert all(xa > xv for xv, xa in zip(v, a, strict=True))  # side by side
    hlines = {round(ln.get_ydata()[0], 6) for ln in left.get_lines()
              if ln.get_linestyle() == "--" and len(set(ln.get_ydata())) == 1}
    assert {5.0, 30.0} <= hlines
    ticks = [t.get_text().split("\n")[0] for t in right.get_xticklabels()]
    assert ticks == ["segmentation", "detection", "generation"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "easy: gap < 5%" in legend and "hard: gap > 30%" in legend
    assert left.get_ylim() == right.get_ylim()  # one scale for both panels
    with pytest.raises(UserInputError, match="lacks the column"):
        plotting.plot_transfer_gaps(gaps=gaps.drop(columns=["regime"]))
    with pytest.raises(UserInputError, match="needs results"):
        plotting.plot_transfer_gaps()


def test_fig4_marker_is_the_combined_gap_with_its_interval(gaps):
    fig = plotting.plot_transfer_gaps(gaps=gaps)
    for ax, sub, col in (
        (fig.axes[0], gaps[(gaps["task"] == "classification") & (gaps["dataset"] != "cifar-10")],
         "dataset"),
        (fig.axes[1], gaps[(gaps["dataset"] == "cifar-10") & (gaps["task"] != "classification")],
         "task"),
    ):
        diamonds = [ln for ln in ax.get_lines() if ln.get_marker() == "D"]
        assert len(diamonds) == 1
        want = 100 * sub["combined_gap"].to_numpy()
        np.testing.assert_allclose(diamonds[0].get_ydata(), want)
        # the marker's error bar is the 95% interval, +- 1.96 SE
        errs = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"
                and c.lines[0] is diamonds[0]]
        seg = np.array([s[:, 1] for s in errs[0].lines[2][0].get_segments()])
        half = 100 * 1.959963984540054 * sub["combined_gap_se"].to_numpy()
        np.testing.assert_allclose(seg.min(1), want - half)
        np.testing.assert_allclose(seg.max(1), want + half)
        # each tick label names the combined gap and the regime of its column
        for t, (_, r) in zip(ax.get_xticklabels(), sub.iterrows(), strict=True):
            assert t.get_text() == f"{r[col]}\n{100 * r['combined_gap']:.1f}%, {r['regime']}"


@pytest.mark.parametrize("thresholds", [(0.1, 0.2), (0.05, 0.3)])
def test_fig4_text_never_overlaps_text_bars_or_error_bars(gaps, thresholds):
    fig = plotting.plot_transfer_gaps(gaps=gaps, thresholds=thresholds)
    for ax in fig.axes:
        assert_text_clear_of_data(fig, ax)


def test_overlap_check_can_fail(gaps):
    fig = plotting.plot_transfer_gaps(gaps=gaps)
    ax = fig.axes[0]
    bar = next(c for c in ax.containers if c.__class__.__name__ == "BarContainer").patches[-1]
    ax.text(bar.get_x(), bar.get_height() / 2, "over a bar", fontsize=12)
    with pytest.raises(AssertionError, match="overlaps a bar"):
        assert_text_clear_of_data(fig, ax)
    ax.texts[-1].remove()
    ax.text(0.5, 1.0, ax.get_title(), transform=ax.transAxes, ha="center", va="bottom",
            fontsize=12)  # on top of the panel title
    with pytest.raises(AssertionError, match="overlaps"):
        assert_no_overlapping_text(fig)


def _study_figures(ds):
    return {
        "fig1": plotting.plot_validity_trajectories(ds),
        "fig2": plotting.plot_validity_by_task(ds),
        "fig3": plotting.plot_accuracy_distributions(ds),
        "fig4": plotting.plot_transfer_gaps(ds),
        "fig5": plotting.plot_validity_heatmap(ds),
    }


@pytest.fixture(scope="module")
def all_figures(full):
    return _study_figures(full)


@pytest.mark.parametrize("name", ["fig1", "fig2", "fig3", "fig4", "fig5"])
def test_every_study_figure_has_no_overlapping_text(all_figures, name):
    assert_no_overlapping_text(all_figures[name])


@pytest.mark.parametrize("name", ["fig1", "fig2", "fig3", "fig4", "fig5"])
def test_every_caption_states_the_uncertainty_convention(all_figures, name):
    caption = all_figures[name].get_supxlabel().replace("\n", " ")
    assert "95% intervals" in caption
    assert "1.96" in caption and "SE over trials" in caption
    assert "1 SE" not in caption.replace("1.96", "")


def test_fig5_annotates_every_cell_and_marks_lowest(full):
    fig = plotting.plot_validity_heatmap(full)
    _labels_ok(fig)
    ax = fig.axes[0]
    assert len(ax.texts) == 32
    mean = 100 * full["validity_rate"].sel(iteration=5).mean("trial")
    assert ax.texts[0].get_text().startswith(f"{float(mean[0, 0]):.1f}")
    se = 100 * full["validity_rate"].sel(iteration=5).std("trial", ddof=1) / np.sqrt(TRIALS)
    assert ax.texts[0].get_text().endswith(f"$\\pm${1.959963984540054 * float(se[0, 0]):.1f}")
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


def test_trend_figure_has_a_panel_per_task_and_the_reference_band(full):
    fig = plotting.plot_trend_gains(full)
    tasks = list(full["task"].values)
    assert [ax.get_title() for ax in fig.axes] == tasks
    assert "points" in fig.axes[0].get_ylabel()
    # the reference's interval is drawn as a band in every panel
    assert all(len(ax.patches) >= 1 for ax in fig.axes)
    with pytest.raises(UserInputError, match="gain_lo"):
        plotting.plot_trend_gains(gains=pd.DataFrame({"dataset": [], "task": [], "gain": []}))
