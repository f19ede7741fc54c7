"""What pruning saves: the same Optuna search (hparams_search=optuna, same sampler seed) with a pruner and without.

    python scripts/optuna_pruning.py                       30 trials on the digits, median pruner against none
    python scripts/optuna_pruning.py --trials 12 --pruner hyperband trainer.epochs=20

Prints, for each search, the trials completed, pruned and failed, the epochs trained in all (every trial's
metrics.json), the best val/loss and the wall time; then the pruned search's share of the epochs and how far its best
val/loss is from the unpruned one's. Exit status 1 when the pruned search trains more than --max-epoch-share of the
epochs or its best val/loss is more than --max-loss-gap above the unpruned one (issue #18's bar: 0.6 and 0.1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DL_RUN = str(Path(sys.executable).with_name("dl-run"))


def start_search(out: Path, pruner: str, trials: int, seed: int, extra: list[str]) -> subprocess.Popen:
    """`dl-run -m hparams_search=optuna` with this pruner, into out/<pruner>/ (its output in out/<pruner>.log)."""
    args = ["-m", "hparams_search=optuna", f"hydra.sweeper.pruner={pruner}", f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.sampler.seed={seed}", "dataset=digits", f"hydra.sweep.dir={out / pruner}", *extra]
    print("dl-run " + " ".join(args), flush=True)
    return subprocess.Popen([DL_RUN, *args], stdout=(out / f"{pruner}.log").open("w"), stderr=subprocess.STDOUT)


def measure(sweep: Path) -> dict[str, float]:
    """Trials by how they ended (Optuna's study), epochs trained in all (the trials' metrics.json), best val/loss."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="dl-run", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    epochs = sum(json.loads(m.read_text()).get("epochs_run", 0) for m in sweep.glob("trial_*/metrics.json"))
    return {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"), "epochs": epochs,
            "best val/loss": study.best_value if "COMPLETE" in states else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed, the same for both searches")
    parser.add_argument("--pruner", default="median", help="median or hyperband, against none")
    parser.add_argument("--out", type=Path, default=None, help="where the two sweeps go (default: a temporary folder)")
    parser.add_argument("--max-epoch-share", type=float, default=0.6)
    parser.add_argument("--max-loss-gap", type=float, default=0.1)
    parser.add_argument("overrides", nargs="*", help="more dl-run overrides for both, e.g. trainer.threads=1")
    opts = parser.parse_args()
    out = opts.out or Path(tempfile.mkdtemp(prefix="optuna_pruning_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Side by side: each search runs its trials one after another, on one core each with trainer.threads=1.
    procs = {p: start_search(out, p, opts.trials, opts.seed, opts.overrides) for p in (opts.pruner, "none")}
    results = {}
    for pruner, proc in procs.items():
        if proc.wait() != 0:
            print(f"the {pruner} search failed: see {out / f'{pruner}.log'}")
            return 2
        results[pruner] = {**measure(out / pruner), "wall s": round(time.perf_counter() - started, 1)}
    columns = list(results["none"])
    print(f"\n{'search':<12}" + "".join(f"{c:>15}" for c in columns))
    for pruner, row in results.items():
        print(f"{'pruner=' + pruner:<12}" + "".join(f"{row[c]:>15.4g}" if isinstance(row[c], float) else f"{row[c]:>15}"
                                                  for c in columns))
    pruned, full = results[opts.pruner], results["none"]
    if pruned["failed"] or full["failed"]:  # a broken run makes the comparison meaningless: say so, do not judge
        print(f"\n{pruned['failed']} + {full['failed']} trials failed: see the logs in {out}")
        return 2
    share = pruned["epochs"] / full["epochs"]
    gap = (pruned["best val/loss"] - full["best val/loss"]) / full["best val/loss"]
    print(f"\npruner={opts.pruner}: {pruned['pruned']}/{pruned['trials']} trials pruned "
          f"({pruned['pruned'] / pruned['trials']:.0%}); {pruned['epochs']} of {full['epochs']} epochs "
          f"({share:.0%}, bar {opts.max_epoch_share:.0%}); best val/loss {pruned['best val/loss']:.4f} against "
          f"{full['best val/loss']:.4f} ({gap:+.1%}, bar +{opts.max_loss_gap:.0%}). Sweeps in {out}")
    return 0 if share <= opts.max_epoch_share and gap <= opts.max_loss_gap else 1


if __name__ == "__main__":
    sys.exit(main())
