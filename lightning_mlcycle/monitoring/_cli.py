"""``mlcycle-monitor``: check new inputs (a ``.npy`` file or a folder of images) against a profile.

Examples::

    mlcycle-monitor new_inputs.npy --model outputs/2026-11-27/12-00-00        # a run folder
    mlcycle-monitor photos/ --model run/export --window 100 --log drift.jsonl --fail-on-drift
    mlcycle-monitor x.npy --model run/checkpoints/best.ckpt --profile run/monitoring
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger("lightning_mlcycle.monitoring")

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlcycle-monitor",
        description="Check new inputs against the reference profile of a trained model, window by "
        "window: drift tests (KS, MMD, prediction distribution) and a label-free accuracy estimate.",
    )
    p.add_argument("inputs", help="a .npy file of raw inputs (N, ...) or a folder of images")
    p.add_argument(
        "--model",
        required=True,
        help="an mlcycle run folder, an export folder (model_card.json), an .onnx file in one, "
        "or a Lightning .ckpt of a ClassificationModule",
    )
    p.add_argument(
        "--profile",
        default=None,
        help="profile folder (profile.json + profile.npz); default: next to the model",
    )
    p.add_argument("--labels", default=None, help="optional .npy of true labels, for real accuracy")
    p.add_argument("--window", type=int, default=200, help="samples per window (default 200)")
    p.add_argument(
        "--alpha", type=float, default=0.05, help="false-alarm rate per window (default 0.05)"
    )
    p.add_argument(
        "--detectors",
        default="ks,mmd,prediction",
        help="comma-separated: ks, mmd, prediction (default: all)",
    )
    p.add_argument("--log", default=None, help="JSON-lines file that gets one line per window")
    p.add_argument("--tensorboard", default=None, help="TensorBoard log folder for the scalars")
    p.add_argument(
        "--patience", type=int, default=3, help="drifted windows before retraining is suggested"
    )
    p.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 3 when any window drifted"
    )
    p.add_argument(
        "--no-model-check",
        action="store_true",
        help="accept a profile whose fingerprint does not match the model",
    )
    return p


def _resolve(model_arg: str, profile_arg: str | None) -> tuple[Any, Path]:
    """The model object and the profile folder from the command line."""
    path = Path(model_arg)
    if not path.exists():
        raise MLCycleError(f"`--model` {model_arg!r} does not exist.")
    if path.is_dir() and (path / "export" / "model_card.json").is_file():
        path = path / "export"  # a run folder
    profile_dir: Path | None = Path(profile_arg) if profile_arg else None
    if path.suffix == ".ckpt":
        from lightning_mlcycle.models import ClassificationModule

        model = ClassificationModule.load_from_checkpoint(str(path), map_location="cpu").eval()
        if profile_dir is None:
            profile_dir = path.parent.parent / "monitoring"
    elif (
        path.is_dir()
        and not (path / "model_card.json").is_file()
        and (path / "monitoring").is_dir()
    ):
        raise MLCycleError(
            f"{path} is a run folder without an exported model; pass --model <run>/checkpoints/<file>.ckpt."
        )
    else:
        from lightning_mlcycle.export import Predictor

        model = Predictor(path)
        if profile_dir is None:
            profile_dir = path if path.is_dir() else path.parent
    return model, profile_dir


def load_images(
    folder: Path, input_shape: Sequence[int], raw_range: tuple[float, float]
) -> torch.Tensor:
    """Images of a folder (sorted by name) as a raw batch ``(N, C, H, W)`` in ``raw_range``."""
    from PIL import Image

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise MLCycleError(f"No images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {folder}.")
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise MLCycleError(
            f"A folder of images needs a model of 1- or 3-channel images, but its input is {tuple(input_shape)}."
        )
    c, h, w = input_shape
    lo, hi = raw_range
    batch = []
    for f in files:
        with Image.open(f) as img:
            arr = np.asarray(img.convert("L" if c == 1 else "RGB").resize((w, h)), dtype=np.float32)
        arr = arr[None] if c == 1 else arr.transpose(2, 0, 1)
        batch.append(lo + arr / 255.0 * (hi - lo))
    return torch.from_numpy(np.stack(batch))


def _raw_range(model: Any, profile: Any) -> tuple[float, float]:
    interface = getattr(model, "interface", None)
    if interface is not None and getattr(interface, "raw_range", None):
        lo, hi = interface.raw_range
        return float(lo), float(hi)
    stats = profile.input_stats
    return float(min(stats["min"])), float(max(stats["max"]))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mlcycle-monitor``; returns the exit status."""
    from lightning_mlcycle.monitoring import DriftMonitor, ReferenceProfile

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.window < 2:
        print(
            f"mlcycle-monitor: `--window` must be at least 2, but got {args.window}.",
            file=sys.stderr,
        )
        return 2
    try:
        model, profile_dir = _resolve(args.model, args.profile)
        profile = ReferenceProfile.load(profile_dir)
        inputs = Path(args.inputs)
        if inputs.is_dir():
            x = load_images(inputs, profile.input_shape, _raw_range(model, profile))
        elif inputs.suffix == ".npy" and inputs.is_file():
            x = torch.from_numpy(np.load(inputs, allow_pickle=False))
        else:
            raise MLCycleError(
                f"`inputs` must be a .npy file or a folder of images, but got {args.inputs!r}."
            )
        labels = torch.from_numpy(np.load(args.labels, allow_pickle=False)) if args.labels else None
        monitor = DriftMonitor(
            model,
            profile,
            alpha=args.alpha,
            detectors=[d.strip() for d in args.detectors.split(",") if d.strip()],
            log_path=args.log,
            tensorboard=args.tensorboard,
            patience=args.patience,
            check_model=not args.no_model_check,
        )
    except (MLCycleError, ValueError, TypeError, OSError) as err:
        print(f"mlcycle-monitor: {err}", file=sys.stderr)
        return 1
    drifted = 0
    n = x.shape[0]
    print(f"{n} inputs, windows of {args.window}, profile {profile.fingerprint} ({profile_dir})")
    for i, start in enumerate(range(0, n, args.window)):
        window = x[start : start + args.window]
        y = labels[start : start + args.window] if labels is not None else None
        try:
            report = monitor.check(window, y)
        except MLCycleError as err:
            print(f"window {i} [{start}:{start + window.shape[0]}]: rejected: {err}")
            continue
        drifted += report.drifted
        tests = " ".join(f"{r.detector}:p={r.p_value:.3g}" for r in report.results)
        acc = f" accuracy={report.accuracy:.3f}" if report.accuracy is not None else ""
        print(
            f"window {i} [{start}:{start + window.shape[0]}]: {'DRIFT' if report.drifted else 'ok'} "
            f"{tests} est_accuracy={report.estimated_accuracy:.3f}{acc}"
            + (" RETRAIN SUGGESTED" if report.retrain_suggested else "")
        )
    summary = {"windows": monitor.windows_seen, "drifted": drifted, "log": args.log}
    print(json.dumps(summary))
    return 3 if (drifted and args.fail_on_drift) else 0


def cli() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
