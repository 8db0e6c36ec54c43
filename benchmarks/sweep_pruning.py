"""Optuna sweep with and without pruning, side by side: epochs trained, wall time, best value.

Both arms run the real ``mlcycle -m hparams_search=digits_optuna`` (same search space, same TPE
seed, same ``n_trials``). The baseline uses ``NopPruner``, so the OptunaPruning callback still
reports every epoch (that is how its epochs are counted) but never stops a trial; the other arm
uses the config's pruner as a user gets it (successive halving, steps in training samples).
Epochs trained = validations reported (one per epoch). ``--arms`` adds diagnostic arms: the
session-1 setting (MedianPruner, 20 warm-up optimizer steps, steps = global step) and the same
MedianPruner with steps in samples (warm-up: one epoch), and Optuna's HyperbandPruner (brackets
of successive halving, ``max_resource`` from the first finished trial).

    python benchmarks/sweep_pruning.py            # 20 trials x 8 epochs per arm, 2 seeds
    python benchmarks/sweep_pruning.py --n-trials 8 --epochs 4 --repeats 1   # quick look
    python benchmarks/sweep_pruning.py --arms none config median_global median_samples
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
#: short name -> (table label, overrides); "pruner=null" first, so the new node replaces the
#: config's pruner instead of being merged into it
ARMS = {
    "none": ("no pruning (NopPruner)",
             ["hydra.sweeper.pruner=null",
              "hydra.sweeper.pruner={_target_:optuna.pruners.NopPruner}"]),
    "config": ("digits_optuna's pruner (SuccessiveHalving, eta=3, steps in samples)", []),
    "median_global": ("MedianPruner, warm-up 20 global steps (session 1)",
                      ["hydra.sweeper.pruner=null",
                       "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,"
                       "n_startup_trials:3,n_warmup_steps:20}",
                       "hydra.sweeper.step_unit=global_step"]),
    "median_samples": ("MedianPruner, warm-up 1 epoch, steps in samples",
                       ["hydra.sweeper.pruner=null",
                        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,"
                        "n_startup_trials:3,n_warmup_steps:1200}"]),
    "hyperband": ("HyperbandPruner, eta=3, min 1200 samples, max auto, steps in samples",
                  ["hydra.sweeper.pruner=null",
                   "hydra.sweeper.pruner={_target_:optuna.pruners.HyperbandPruner,"
                   "min_resource:1200,max_resource:auto,reduction_factor:3}"]),
}


def run_arm(name: str, extra: list[str], sweep_dir: Path, n_trials: int, epochs: int,
            seed: int) -> dict:
    cmd = [sys.executable, "-m", "lightning_mlcycle.cli.main", "-m",
           "hparams_search=digits_optuna", f"hydra.sweep.dir={sweep_dir}",
           f"hydra.sweeper.n_trials={n_trials}", f"trainer.max_epochs={epochs}",
           f"hydra.sweeper.sampler.seed={seed}", "callbacks=model_checkpoint", "num_threads=1",
           "trainer.accelerator=cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    study = optuna.load_study(study_name="digits_optuna",
                              storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    trials = study.trials
    return {
        "arm": name,
        "seed": seed,
        "complete": sum(t.state.name == "COMPLETE" for t in trials),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "wall_s": round(wall, 1),
        "best_val_acc": round(study.best_value, 4),
        # per trial: which batch size reported at which steps, and how it ended (to see which
        # trials a pruner could compare: Median/Percentile need values at the very same step)
        "trials": [{"number": t.number, "state": t.state.name,
                    "batch_size": t.params.get("data.batch_size"),
                    "steps": sorted(t.intermediate_values), "value": t.value}
                   for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="sampler seeds per arm")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["none", "config"],
                        help="the first is the baseline the others are compared with")
    args = parser.parse_args()
    arms = {ARMS[a][0]: ARMS[a][1] for a in args.arms}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (name, extra) in enumerate(arms.items()):
                res = run_arm(name, extra, Path(tmp) / f"{r}_{i}", args.n_trials, args.epochs,
                              seed=42 + r)
                print({k: v for k, v in res.items() if k != "trials"}, flush=True)
                rows.append(res)
    summary = []
    for name in arms:
        mine = [r for r in rows if r["arm"] == name]
        summary.append({
            "arm": name,
            "runs": len(mine),
            "complete": statistics.median(r["complete"] for r in mine),
            "pruned": statistics.median(r["pruned"] for r in mine),
            "epochs": statistics.median(r["epochs"] for r in mine),
            "wall_s": statistics.median(r["wall_s"] for r in mine),
            "best_val_acc": statistics.median(r["best_val_acc"] for r in mine),
            "best_per_seed": [r["best_val_acc"] for r in mine],
            "epochs_per_seed": [r["epochs"] for r in mine],
        })
    base = summary[0]
    header = (f"Sweep pruning benchmark: digits_optuna, {args.n_trials} trials x up to "
              f"{args.epochs} epochs, TPE seeds {[42 + r for r in range(args.repeats)]} "
              f"(medians over seeds; shared 2-core CPU machine)")
    lines = [header, "",
             "| arm | complete | pruned | epochs trained (per seed) | wall time (s) | best val acc (per seed) |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['arm']} | {s['complete']} | {s['pruned']} | {s['epochs']} "
                     f"({', '.join(map(str, s['epochs_per_seed']))}) | "
                     f"{s['wall_s']} | {s['best_val_acc']} ({', '.join(map(str, s['best_per_seed']))}) |")
    lines.append("")
    for pruned in summary[1:]:
        lines.append(f"{pruned['arm']} / baseline: epochs ratio "
                     f"{pruned['epochs'] / base['epochs']:.2f}; wall ratio "
                     f"{pruned['wall_s'] / base['wall_s']:.2f}; best val acc difference "
                     f"{pruned['best_val_acc'] - base['best_val_acc']:+.4f} (median over seeds)")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_pruning.json").write_text(json.dumps({"runs": rows, "summary": summary,
                                                        "args": vars(args)}, indent=2))
    (ROOT / "benchmarks" / "sweep_pruning.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
