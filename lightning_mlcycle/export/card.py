"""The model card: ``model_card.json`` (machine-readable) and ``model_card.md`` (for people)."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.export.interface import ModelInterface
from lightning_mlcycle.export.latency import LatencyRow, latency_markdown

#: the card's format; bumped when fields change meaning
CARD_SCHEMA = "lightning_mlcycle.model_card/1"
CARD_FILE = "model_card.json"


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries an exported model depends on (None: not installed).

    Example:
        >>> "torch" in library_versions()
        True
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "torch",
        "lightning",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "numpy",
        "apache-tvm",
        "lightning-mlcycle",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_model_card(
    *,
    name: str,
    interface: ModelInterface,
    artifacts: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, float] | None = None,
    latency: Sequence[LatencyRow] = (),
    hardware: Mapping[str, Any] | None = None,
    training_config: Mapping[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Assemble the card as a JSON-ready dict.

    Example:
        >>> spec = ModelInterface((4,), ["a", "b"])
        >>> card = build_model_card(name="m", interface=spec, artifacts=[])
        >>> card["interface"]["input_shape"], card["schema"]
        (['batch', 4], 'lightning_mlcycle.model_card/1')
    """
    primary = next((a for a in artifacts if a.get("format") == "onnx"), None)
    return {
        "schema": CARD_SCHEMA,
        "name": name,
        "description": description or "a classifier exported by lightning_mlcycle",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "interface": interface.to_dict(),
        "class_names": list(interface.class_names),
        "primary_artifact": primary["file"] if primary else None,
        "artifacts": [dict(a) for a in artifacts],
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "hardware": dict(hardware or {}),
        "latency": [r.to_dict() for r in latency],
        "training_config": _jsonable(training_config or {}),
        "versions": library_versions(),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def card_markdown(card: Mapping[str, Any]) -> str:
    """The card for people: interface, preprocessing, classes, metrics, artifacts, latency.

    Example:
        >>> spec = ModelInterface((4,), ["a", "b"])
        >>> md = card_markdown(build_model_card(name="m", interface=spec, artifacts=[]))
        >>> md.splitlines()[0]
        '# Model card: m'
    """
    itf, pre = card["interface"], card["interface"]["preprocessing"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        card.get("description", ""),
        "",
        "## Interface",
        "",
        f"- input `{itf['input_name']}`: {itf['input_dtype']}, shape {itf['input_shape']} "
        f"({itf['layout']}), the batch dimension is dynamic",
        f"- output `{itf['output_name']}`: {itf['output_dtype']}, shape {itf['output_shape']}: "
        f"{itf['output_meaning']}",
        f"- classes ({len(card['class_names'])}): {', '.join(card['class_names'])}",
        "",
        "## Preprocessing",
        "",
    ]
    if pre.get("raw_range"):
        lines.append(f"- raw inputs in [{pre['raw_range'][0]:g}, {pre['raw_range'][1]:g}]")
    if pre.get("image_mode"):
        lines.append(
            f"- images: converted to PIL mode `{pre['image_mode']}`, resized to "
            f"{pre['image_size'][0]}x{pre['image_size'][1]} (height x width)"
        )
    if pre.get("uint8_images"):
        lines.append(f"- {pre['uint8_images']}")
    lines.append(f"- normalization: {pre['formula']}")
    if pre.get("normalization"):
        mean = ", ".join(f"{v:.6g}" for v in pre["normalization"]["mean"])
        std = ", ".join(f"{v:.6g}" for v in pre["normalization"]["std"])
        lines += [f"  - mean: [{mean}]", f"  - std: [{std}]"]
    lines += [
        "",
        "`Predictor(<this folder>)` applies all of this: `Predictor(dir).predict(raw_batch)`.",
        "",
    ]
    if card.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in card["metrics"].items()]
        lines.append("")
    if card.get("artifacts"):
        lines += [
            "## Artifacts",
            "",
            "| file | variant | format | precision | size KiB | parity | sha256 |",
            "|---|---|---|---|---:|---|---|",
        ]
        for a in card["artifacts"]:
            par = a.get("parity") or []
            ok = "n/a" if not par else ("pass" if all(p["passed"] for p in par) else "FAIL")
            lines.append(
                f"| {a['file']} | {a['variant']} | {a['format']} | {a['precision']} | "
                f"{a['bytes'] / 1024:.1f} | {ok} | `{a['sha256'][:12]}` |"
            )
        lines.append("")
    if card.get("latency"):
        rows = [LatencyRow(**r) for r in card["latency"]]
        lines += ["## Latency", "", latency_markdown(rows, card.get("hardware")), ""]
    lines += ["## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in card.get("versions", {}).items() if v]
    if card.get("training_config"):
        lines += [
            "",
            "## Training config",
            "",
            "```json",
            json.dumps(card["training_config"], indent=2),
            "```",
        ]
    return "\n".join(lines) + "\n"


def write_model_card(card: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``model_card.json`` and ``model_card.md`` into ``directory``; return the JSON path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CARD_FILE).write_text(json.dumps(card, indent=2))
    (d / "model_card.md").write_text(card_markdown(card))
    return d / CARD_FILE


def load_model_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model card (the JSON file, or the folder holding ``model_card.json``).

    Raises:
        MLCycleError: the file is missing, not JSON, or not a lightning_mlcycle card.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CARD_FILE
    if not p.is_file():
        raise MLCycleError(
            f"No model card at {str(p)!r}: export the model first (export_model / mlcycle-export)."
        )
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise MLCycleError(f"Model card {str(p)!r} is not valid JSON: {err}") from err
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise MLCycleError(
            f"{str(p)!r} is not a lightning_mlcycle model card (expected schema {CARD_SCHEMA!r}, "
            f"got {card.get('schema') if isinstance(card, dict) else type(card).__name__!r})."
        )
    return card
