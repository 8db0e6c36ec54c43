"""Optuna sweep with and without pruning, side by side: epochs trained, wall time, best value.

Both arms run the real ``mlcycle -m hparams_search=digits_optuna`` (same search space, same TPE
seed, same ``n_trials``). The baseline uses ``NopPruner``, so the OptunaPruning callback still
reports every epoch (that is how its epochs are counted) but never stops a trial; the other arm
uses the config's ``MedianPruner``. Epochs trained = validations reported (one per epoch).

    python benchmarks/sweep_pruning.py            # 20 trials x 8 epochs per arm
    python benchmarks/sweep_pruning.py --n-trials 8 --epochs 4 --repeats 1   # quick look
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
ARMS = {
    "no pruning (NopPruner)": ["hydra.sweeper.pruner._target_=optuna.pruners.NopPruner",
                               "~hydra.sweeper.pruner.n_startup_trials",
                               "~hydra.sweeper.pruner.n_warmup_steps"],
    "MedianPruner": [],
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="sampler seeds per arm")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (name, extra) in enumerate(ARMS.items()):
                res = run_arm(name, extra, Path(tmp) / f"{r}_{i}", args.n_trials, args.epochs,
                              seed=42 + r)
                print(res, flush=True)
                rows.append(res)
    summary = []
    for name in ARMS:
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
        })
    base, pruned = summary
    header = (f"Sweep pruning benchmark: digits_optuna, {args.n_trials} trials x up to "
              f"{args.epochs} epochs, TPE seeds {[42 + r for r in range(args.repeats)]} "
              f"(medians over seeds; shared 2-core CPU machine)")
    lines = [header, "",
             "| arm | complete | pruned | epochs trained | wall time (s) | best val acc (per seed) |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['arm']} | {s['complete']} | {s['pruned']} | {s['epochs']} | "
                     f"{s['wall_s']} | {s['best_val_acc']} ({', '.join(map(str, s['best_per_seed']))}) |")
    lines += ["", f"epochs ratio (pruned / baseline): {pruned['epochs'] / base['epochs']:.2f}; "
                  f"wall ratio: {pruned['wall_s'] / base['wall_s']:.2f}; best val acc difference: "
                  f"{pruned['best_val_acc'] - base['best_val_acc']:+.4f}"]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_pruning.json").write_text(json.dumps({"runs": rows, "summary": summary,
                                                        "args": vars(args)}, indent=2))
    (ROOT / "benchmarks" / "sweep_pruning.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
