"""Real data beside the model: fit the bundled LEMUR first-epoch accuracies and compare
the Khalid et al. 2026 run with its fitted scenario.

Runs offline (the data ship with the package). Writes CSV tables and PNG/PDF figures to
``--out``; ``--quick`` uses few NUTS draws and simulated runs (seconds to a minute).

    python examples/lemur_real_data.py --quick --out results/example_lemur
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/example_lemur", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small settings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_num_cpu_devices", 2)  # two NUTS chains in parallel

    from llmnas_transfer.io.bundled import load_lemur
    from llmnas_transfer.study import lemur, scenarios

    arch = load_lemur("architecture")
    print(f"LEMUR: {len(arch)} architectures, sources: "
          + ", ".join(f"{k} {v}" for k, v in arch["source"].value_counts().items()))

    rep = lemur.run_lemur(args.out, quick=args.quick, seed=args.seed)
    d = rep.diagnostics
    print(f"\nfit: max r_hat {d['max_r_hat']:.3f}, {d['divergences']} divergences")
    llm = rep.gaps[rep.gaps["source"] == "llm"]
    print("\nLLM-generated architectures, mean first-epoch accuracy minus CIFAR-10 (94% HDI):")
    for r in llm.itertuples():
        print(f"  {r.dataset:14s} {r.accuracy_difference:+.3f} "
              f"[{r.accuracy_difference_hdi_lo:+.3f}, {r.accuracy_difference_hdi_hi:+.3f}]")
    ranks = rep.rank_transfer[rep.rank_transfer["source"] == "llm"]
    print("\nRank transfer from CIFAR-10 (LLM architectures, Spearman, 95% bootstrap):")
    for r in ranks.itertuples():
        print(f"  {r.dataset:14s} {r.spearman:.2f} [{r.spearman_lo:.2f}, {r.spearman_hi:.2f}]"
              f"  n={r.n}")
    print("\nHeld-out coverage of 90% predictive intervals:")
    for r in rep.coverage.itertuples():
        print(f"  {r.dataset:14s} {r.coverage:.3f}  band [{r.band_lo:.3f}, {r.band_hi:.3f}]")

    out = scenarios.run_scenario("khalid2026", args.out, seed=args.seed,
                                 num_trials=200 if args.quick else 2000)
    comp = out["comparison"]
    print("\nKhalid et al. 2026 (22 cycles, CIFAR-10): published vs simulated runs")
    for r in comp.itertuples():
        print(f"  {r.statistic:18s} published {r.published:.4f}  simulated "
              f"{r.simulated:.4f} +- {r.simulated_se:.4f} (one run: sd {r.run_sd:.3f})")
    print(f"\nwrote {len(rep.files) + len(out['files'])} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
