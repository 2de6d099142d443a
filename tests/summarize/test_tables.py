import numpy as np
import pandas as pd
import pytest

from llmnas_transfer import simulate
from llmnas_transfer.errors import UserInputError
from llmnas_transfer.summarize.tables import (
    accuracy_table,
    classify_regime,
    gap_components,
    gaps_table,
    novelty_table,
    validity_table,
    write_csv,
)


@pytest.fixture(scope="module")
def results():
    return simulate(0, datasets="cifar-10,svhn,audioset", tasks="classification,generation",
                    num_trials=12, num_iterations=4, num_candidates=15, per_candidate=True)


def test_gap_components_add_up(rng):
    v, a, vr, ar = rng.uniform(0.1, 1, (4, 100))
    g = gap_components(v, a, vr, ar)
    np.testing.assert_allclose(g["validity_component"] + g["accuracy_component"],
                               g["combined_gap"], atol=1e-12)
    np.testing.assert_allclose(g["validity_gap"], 1 - v / vr)
    np.testing.assert_allclose(g["combined_gap"], 1 - (v * a) / (vr * ar))
    # no accuracy change: the combined gap is the validity gap
    g2 = gap_components(v, ar, vr, ar)
    np.testing.assert_allclose(g2["combined_gap"], g2["validity_gap"])


def test_regimes_and_thresholds():
    assert classify_regime(0.099) == "easy"
    assert classify_regime(0.10) == "moderate"
    assert classify_regime(0.21) == "hard"
    assert classify_regime(0.21, thresholds=(0.25, 0.30)) == "easy"
    np.testing.assert_array_equal(classify_regime(np.array([0.0, 0.15, 0.5])),
                                  ["easy", "moderate", "hard"])
    with pytest.raises(UserInputError):
        classify_regime(0.1, thresholds=(0.3, 0.2))


def test_validity_table_matches_manual(results):
    df = validity_table(results)
    row = df[(df.dataset == "svhn") & (df.task == "generation") & (df.iteration == 3)].iloc[0]
    x = results["validity_rate"].sel(dataset="svhn", task="generation", iteration=3).values
    assert row.validity_mean == pytest.approx(x.mean())
    assert row.validity_se == pytest.approx(x.std(ddof=1) / np.sqrt(x.size))
    assert row.n_trials == 12
    assert row.ci_low <= row.validity_mean <= row.ci_high


def test_accuracy_table_pools_valid_candidates(results):
    df = accuracy_table(results)
    row = df[(df.dataset == "audioset") & (df.task == "classification")].iloc[0]
    acc = results["accuracy"].sel(dataset="audioset", task="classification", iteration=4).values
    acc = acc[np.isfinite(acc)]
    assert row.accuracy_mean == pytest.approx(acc.mean(), rel=1e-5)
    assert row.accuracy_sd == pytest.approx(acc.std(), rel=1e-3)
    assert row.accuracy_q50 == pytest.approx(np.quantile(acc, 0.5))
    assert row.n_valid == acc.size
    nov = novelty_table(results)
    assert set(nov.columns) >= {"dataset", "task", "novelty_mean", "novelty_sd"}


def test_accuracy_quantiles_from_histogram_are_within_a_bin(results):
    no_cands = results.drop_vars(["valid", "accuracy", "novelty"])
    a = accuracy_table(results)
    b = accuracy_table(no_cands)
    assert np.all(np.abs(a.accuracy_q50 - b.accuracy_q50) <= 1 / 20 + 1e-9)


def test_gaps_table(results):
    g = gaps_table(results)
    ref = g[(g.dataset == "cifar-10") & (g.task == "classification")].iloc[0]
    assert ref.combined_gap == 0 and ref.regime == "easy"
    np.testing.assert_allclose(g.validity_component + g.accuracy_component, g.combined_gap,
                               atol=1e-12)
    assert (g.combined_gap_se[g.dataset != "cifar-10"] > 0).all()
    g2 = gaps_table(results, reference=("svhn", "classification"))
    assert g2.set_index(["dataset", "task"]).loc[("svhn", "classification"), "combined_gap"] == 0
    with pytest.raises(UserInputError, match="reference setting"):
        gaps_table(results, reference=("imagenet", "classification"))
    with pytest.raises(UserInputError, match="iteration 9"):
        gaps_table(results, iteration=9)


def test_gaps_table_normalises_accuracy_by_chance_and_has_trend_gaps():
    """A 2-class task is never 'better' than CIFAR-10 by guessing; gains against the
    reference's give the trend gap, computed by hand here from the per-trial counts."""
    r = simulate(2, datasets="cifar-10,nlp-sst2", tasks="classification", num_trials=20,
                 num_iterations=4, num_candidates=15)
    g = gaps_table(r, n_boot=50).set_index("dataset")
    assert g.loc["nlp-sst2", "chance"] == 0.5
    assert g.loc["cifar-10", "chance"] == pytest.approx(0.1)
    A, c = g["accuracy"], g["chance"]
    norm = (A - c) / (1 - c)
    assert g.loc["nlp-sst2", "accuracy_gap"] == pytest.approx(
        1 - norm["nlp-sst2"] / norm["cifar-10"])
    assert g.loc["nlp-sst2", "raw_accuracy_gap"] == pytest.approx(
        1 - A["nlp-sst2"] / A["cifar-10"])
    rate = r["validity_rate"].sel(task="classification").mean("trial")
    gain = (rate.isel(iteration=-1) - rate.isel(iteration=0)).to_series()
    assert g.loc["nlp-sst2", "gain"] == pytest.approx(gain["nlp-sst2"])
    assert g.loc["nlp-sst2", "trend_gap"] == pytest.approx(
        1 - gain["nlp-sst2"] / gain["cifar-10"])
    assert g.loc["cifar-10", "trend_gap"] == 0 and g.loc["nlp-sst2", "trend_gap_se"] > 0


def test_gaps_table_survives_cells_without_valid_candidates():
    from llmnas_transfer.sim.params import load_defaults

    d = load_defaults()
    # an impossible setting: validity probability ~ 0
    from llmnas_transfer.sim import registry

    registry.register_dataset("impossible", modality="audio", resolution=64, num_classes=10,
                              difficulty=40.0, replace=True)
    try:
        r = simulate(0, datasets="cifar-10,impossible", tasks="classification", num_trials=3,
                     num_iterations=2, num_candidates=4, defaults=d)
        g = gaps_table(r, n_boot=20)
        row = g[g.dataset == "impossible"].iloc[0]
        assert row.validity == 0 and np.isnan(row.accuracy)
    finally:
        registry.unregister_dataset("impossible")


def test_write_csv_atomic_with_float_format(tmp_path):
    df = pd.DataFrame({"a": [1 / 3, 2.0], "b": ["x", "y"]})
    p = write_csv(df, tmp_path / "t.csv", float_format="%.3g")
    assert p.read_text() == "a,b\n0.333,x\n2,y\n"
    assert write_csv(df, tmp_path / "u.csv").read_text() == df.to_csv(index=False)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["t.csv", "u.csv"]
    with pytest.raises(UserInputError, match="cannot write"):
        write_csv(df, tmp_path / "missing" / "t.csv")
