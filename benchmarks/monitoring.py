"""Drift-detection benchmark: false alarms and power of KS, MMD and the prediction test, side by side.

Run: ``python benchmarks/monitoring.py`` (``--quick`` for a smoke run).

Protocol (one run, one seed):
1. Two data sets large enough for fresh windows of 1,000 samples from the *same* distribution:
   - ``images``: 24,000 synthetic 8x8 grey images in [0, 16], 4 classes (a vertical, horizontal,
     diagonal or anti-diagonal bar at a random place and brightness, on a noisy background);
   - ``tabular``: 24,000 rows of ``sklearn.datasets.make_classification`` (20 features, 4 classes).
   Split: 6,000 train (model + PCA), 2,000 validation (the reference profile), 16,000 live pool.
2. A small model (CNN / MLP) trained for a few epochs; ``ReferenceProfile.capture`` on validation.
3. Each detector alone at ``alpha = 0.05`` on the same windows: ``KSDrift`` and ``MMDDrift`` on the
   profile's features (PCA + subspace distance for images, raw features for tabular),
   ``PredictionDrift`` on the model's probabilities; ``monitor`` = the three together with
   Bonferroni (``min p <= alpha / 3``), as ``DriftMonitor`` decides.
4. False-alarm rate: fraction of unshifted windows flagged (``--null-windows`` per size).
   Power: fraction of shifted windows flagged (``--windows`` per cell), shifts from
   ``lightning_mlcycle.monitoring.shifts`` at severities 1, 3 (moderate) and 5, windows of 50, 200
   and 1,000. Time per window: median over the windows, detector only (features precomputed).

Writes ``benchmarks/results/monitoring.json`` and prints a Markdown table.
The machine was a shared 2-core CPU: times are indicative.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_mlcycle.monitoring import (
    KSDrift,
    MMDDrift,
    PredictionDrift,
    ReferenceProfile,
    apply_shift,
)
from lightning_mlcycle.monitoring.shifts import IMAGE_SHIFTS, TABULAR_SHIFTS

RESULTS = Path(__file__).resolve().parent / "results"
ALPHA = 0.05
SIZES = (50, 200, 1000)
DETECTORS = ("ks", "mmd", "prediction")


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 8, 8, generator=g) * 3.0
    pos = torch.randint(1, 7, (n,), generator=g)
    level = 10.0 + torch.rand(n, generator=g) * 6.0
    idx = torch.arange(8)
    for c in range(4):
        sel = (y == c).nonzero().flatten()
        for i in sel.tolist():
            p, v = int(pos[i]), float(level[i])
            if c == 0:
                x[i, :, p] = v
            elif c == 1:
                x[i, p, :] = v
            elif c == 2:
                x[i, idx, (idx + p - 4).clamp(0, 7)] = v
            else:
                x[i, idx, (7 - idx + p - 4).clamp(0, 7)] = v
    return x[:, None].clamp(0, 16), y


def synthetic_tabular(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.5,
        random_state=seed,
    )
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def train(x: torch.Tensor, y: torch.Tensor, images: bool, epochs: int) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    if images:
        net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 4),
        )
    else:
        net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    mean = x.mean(dim=[0, *range(2, x.ndim)], keepdim=True)[0]
    std = x.std(dim=[0, *range(2, x.ndim)], keepdim=True)[0]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 128):
            b = perm[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net((x[b] - mean) / std), y[b]).backward()
            opt.step()
    net.eval()

    def predict(raw: torch.Tensor) -> torch.Tensor:
        return net((raw - mean) / std)

    return net, predict


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    images = name == "images"
    x, y = synthetic_images(24000, 0) if images else synthetic_tabular(24000, 0)
    x_train, y_train = x[:6000], y[:6000]
    x_val, y_val = x[6000:8000], y[6000:8000]
    pool, pool_y = x[8000:], y[8000:]
    _, predict = train(x_train, y_train, images, args.epochs)
    profile = ReferenceProfile.capture(predict, x_val, y_val, fit_inputs=x_train, n_components=16)
    with torch.inference_mode():
        val_acc = float((predict(x_val).argmax(1) == y_val).float().mean())
    print(
        f"[{name}] validation accuracy {val_acc:.3f}, projection {profile.projection}, "
        f"{profile.arrays['features'].shape[1]} features",
        flush=True,
    )
    dets = {
        "ks": KSDrift(ALPHA, calibration_splits=args.calibration_splits).fit(
            profile.arrays["features"]
        ),
        "mmd": MMDDrift(ALPHA, permutations=args.permutations).fit(profile.arrays["features"]),
        "prediction": PredictionDrift(ALPHA).fit(profile.arrays["probs"]),
    }
    g = torch.Generator().manual_seed(1)
    shifts = IMAGE_SHIFTS if images else TABULAR_SHIFTS
    cells = [("none", 0)] + [(s, v) for s in shifts for v in args.severities]
    rows = []
    for shift, sev in cells:
        for size in SIZES:
            n_windows = args.null_windows if shift == "none" else args.windows
            hits = dict.fromkeys([*DETECTORS, "monitor"], 0)
            times: dict[str, list[float]] = {d: [] for d in DETECTORS}
            accs = []
            for w in range(n_windows):
                idx = torch.randperm(pool.shape[0], generator=g)[:size]
                raw = pool[idx]
                if shift != "none":
                    raw = apply_shift(raw, shift, sev, seed=w)
                with torch.inference_mode():
                    probs = torch.softmax(predict(raw), dim=1)
                accs.append(float((probs.argmax(1) == pool_y[idx]).float().mean()))
                feats = profile.features(raw)
                ps = {}
                for d, det in dets.items():
                    t0 = time.perf_counter()
                    res = det.test(probs if d == "prediction" else feats)
                    times[d].append(time.perf_counter() - t0)
                    hits[d] += res.drifted
                    ps[d] = res.p_value
                hits["monitor"] += min(ps.values()) <= ALPHA / len(ps)
            row = {
                "data": name,
                "shift": shift,
                "severity": sev,
                "window": size,
                "windows": n_windows,
                "accuracy": round(statistics.mean(accs), 4),
                **{d: hits[d] / n_windows for d in hits},
                **{f"ms_{d}": round(1000 * statistics.median(times[d]), 2) for d in DETECTORS},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"validation_accuracy": val_acc, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    head = ["data", "shift", "sev", "acc@200"]
    for size in SIZES:
        head += [f"KS@{size}", f"MMD@{size}", f"pred@{size}", f"all@{size}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    time_lines = []
    for name, res in results["datasets"].items():
        rows = res["rows"]
        keys = list(dict.fromkeys((r["shift"], r["severity"]) for r in rows))
        for shift, sev in keys:
            cell = {r["window"]: r for r in rows if r["shift"] == shift and r["severity"] == sev}
            label = "no shift (false alarms)" if shift == "none" else shift
            out = [name, label, str(sev), f"{cell[200]['accuracy']:.3f}"]
            for size in SIZES:
                r = cell[size]
                out += [
                    f"{r['ks']:.2f}",
                    f"{r['mmd']:.2f}",
                    f"{r['prediction']:.2f}",
                    f"{r['monitor']:.2f}",
                ]
            lines.append("| " + " | ".join(out) + " |")
        for size in SIZES:
            sel = [r for r in rows if r["window"] == size]
            med = {d: statistics.median(r[f"ms_{d}"] for r in sel) for d in DETECTORS}
            time_lines.append(
                f"| {name} | {size} | " + " | ".join(f"{med[d]:.1f}" for d in DETECTORS) + " |"
            )
    table = "\n".join(lines)
    times = "\n".join(
        ["| data | window | KS ms | MMD ms | prediction ms |", "|---|---|---|---|---|", *time_lines]
    )
    return (
        table
        + "\n\nTime per window (median, detector only, shared 2-core CPU, one thread):\n\n"
        + times
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=40, help="shifted windows per cell")
    parser.add_argument("--null-windows", type=int, default=200, help="unshifted windows per size")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--permutations", type=int, default=100, help="MMD permutations per window")
    parser.add_argument("--calibration-splits", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=["images", "tabular"])
    parser.add_argument("--quick", action="store_true", help="few windows, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.null_windows, args.severities = 5, 10, [3]
    torch.set_num_threads(1)
    np.random.seed(0)
    start = time.perf_counter()
    results = {"alpha": ALPHA, "args": vars(args), "datasets": {}}
    for name in args.datasets:
        results["datasets"][name] = run_dataset(name, args)
    results["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(results, indent=2))
    md = markdown(results)
    print(md)
    print(f"total {results['seconds']} s")


if __name__ == "__main__":
    main()
