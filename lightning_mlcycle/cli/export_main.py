"""``mlcycle-export``: export a trained checkpoint (ONNX, torch.export, optional TVM) with checks.

Example: ``mlcycle-export outputs/<run>/checkpoints/best.ckpt --data digits -o exported/``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger("lightning_mlcycle.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlcycle-export",
        description="Export a lightning_mlcycle checkpoint for deployment: ONNX (one file, dynamic "
        "batch), torch.export (.pt2), optionally TVM; parity checks, latency report, model card.",
    )
    p.add_argument(
        "checkpoint", help="a .ckpt written by mlcycle (or any ClassificationModule run)"
    )
    p.add_argument(
        "-o", "--out", default=None, help="export folder (default: <checkpoint dir>/../export)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="data config (conf/data/<name>.yaml, e.g. digits) whose test split is used "
        "for parity and accuracy; default: standard-normal inputs, no accuracy",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        default=["onnx", "pt2"],
        choices=["onnx", "pt2", "tvm"],
        help="artifacts to write",
    )
    p.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[1, 8, 64], help="latency batch sizes"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per latency cell")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per latency cell")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--max-samples", type=int, default=512, help="samples for parity and accuracy")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to time the runtimes"
    )
    return p


def _datamodule(name: str) -> object:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from lightning_mlcycle.cli.main import config_dir

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name="mlcycle", overrides=[f"data={name}", "run_dir=."])
    except Exception as err:
        raise MLCycleError(f"`--data {name}`: {str(err).strip().splitlines()[0]}") from err
    finally:
        GlobalHydra.instance().clear()
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("test")
    return dm


def export_checkpoint(args: argparse.Namespace) -> Path:
    """Load, export, check and time the checkpoint; return the export folder."""
    from lightning_mlcycle.export import ModelInterface, export_model
    from lightning_mlcycle.export.callback import collect_samples
    from lightning_mlcycle.export.checkpoint import load_classifier

    module = load_classifier(args.checkpoint)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.resolve().parent.parent / "export"
    test_data = None
    dm = None
    if args.data:
        dm = _datamodule(args.data)
        x, y = collect_samples(dm.test_dataloader(), args.max_samples)  # type: ignore[attr-defined]
        test_data = (x, y)
        if tuple(x.shape[1:]) != tuple(module.hparams.get("input_shape") or x.shape[1:]):
            raise MLCycleError(
                f"`--data {args.data}` gives samples of shape {tuple(x.shape[1:])}, but the checkpoint "
                f"was trained on {tuple(module.hparams['input_shape'])}."
            )
    interface = ModelInterface.infer(module=module, datamodule=dm)
    result = export_model(
        module,
        out,
        test_data=test_data,
        interface=interface,
        formats=args.formats,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        opset=args.opset,
        max_parity_samples=args.max_samples,
        device=args.device,
        name=str(module.hparams["backbone_config"].get("_target_", "model")).rsplit(".", 1)[-1],
        metrics={},
        training_config=dict(module.hparams),
    )
    print((out / "latency.md").read_text())
    print(
        f"wrote {len(result.artifacts)} artifacts, {len(result.parity)} parity checks passed: {out}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mlcycle-export``; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        export_checkpoint(args)
    except MLCycleError as err:
        print(f"mlcycle-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
