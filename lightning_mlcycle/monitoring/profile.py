"""The reference profile: what "normal" looks like for one model, saved next to it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice
from lightning_mlcycle.monitoring._model import ModelAdapter
from lightning_mlcycle.monitoring.performance import (
    accuracy,
    calibrated_confidence,
    estimate_accuracy,
    fit_temperature,
)

log = logging.getLogger(__name__)

PROFILE_VERSION = 1
_PROJECTIONS = ("auto", "inputs", "pca", "embedding")
_ARRAYS = (
    "features",
    "probs",
    "labels",
    "pca_mean",
    "pca_components",
    "feature_mean",
    "feature_std",
    "probe_inputs",
    "probe_probs",
)
#: tabular inputs wider than this are reduced with PCA by ``projection="auto"``
_MAX_RAW_FEATURES = 64


def _quantiles(x: torch.Tensor, qs: Sequence[float], dim: int = 0) -> list[Any]:
    return torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64), dim=dim).tolist()


def input_statistics(x: torch.Tensor) -> dict[str, Any]:
    """Per-feature (``(N, F)``) or per-channel (``(N, C, ...)``) summary statistics of raw inputs.

    Example:
        >>> input_statistics(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))["mean"]
        [1.0, 2.0]
    """
    per = (
        x.double().flatten(2).transpose(1, 2).reshape(-1, x.shape[1]) if x.ndim > 2 else x.double()
    )
    q = _quantiles(per, (0.01, 0.5, 0.99))
    return {
        "axis": "channel" if x.ndim > 2 else "feature",
        "mean": per.mean(0).tolist(),
        "std": per.std(0).tolist() if per.shape[0] > 1 else [0.0] * per.shape[1],
        "min": per.min(0).values.tolist(),
        "max": per.max(0).values.tolist(),
        "q01": q[0],
        "median": q[1],
        "q99": q[2],
    }


@dataclass
class ReferenceProfile:
    """A model's reference behaviour on held-out data, the baseline every live window is tested against.

    Build one with :meth:`capture`; save it with :meth:`save` (``profile.json`` for people and
    ``profile.npz`` for the arrays; nothing pickled) and read it with :meth:`load`.

    Attributes:
        input_shape: one raw sample's shape.
        num_classes: number of classes.
        class_names: their names.
        projection: how inputs become the features the detectors see (``"inputs"``: flattened raw
            inputs; ``"pca"``: principal components of the flattened inputs; ``"embedding"``: the
            model's penultimate layer, reduced by PCA when wider than ``n_components``). PCA
            features end with the distance to the PCA subspace (the residual norm).
        embedding_layer: the hooked module for ``"embedding"``.
        arrays: ``features`` (N, D) standardized reference features, ``probs`` (N, K), ``labels``
            (N,) or empty, ``pca_mean``/``pca_components`` (projection), ``feature_mean``/
            ``feature_std`` (standardization), ``probe_inputs``/``probe_probs`` (fingerprint).
        temperature: fitted on the reference labels (1.0 without labels).
        input_stats: per-feature / per-channel statistics of the raw inputs.
        prediction_stats: class rates, confidence quantiles, accuracy on the reference.
        metrics: test metrics of the model (e.g. ``{"test/acc": 0.97}``).
        fingerprint_atol: largest probability difference on the probe inputs that still counts
            as the same model (an int8 export may need more).
        created: UTC time of capture.

    Example:
        >>> from torch import nn
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
        >>> model = nn.Linear(4, 3)
        >>> profile = ReferenceProfile.capture(model, x, y)
        >>> profile.projection, tuple(profile.arrays["features"].shape)
        ('inputs', (64, 4))
        >>> profile.check_model(model)  # the same model passes
    """

    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]
    projection: str
    arrays: dict[str, torch.Tensor]
    temperature: float = 1.0
    embedding_layer: str | None = None
    input_stats: dict[str, Any] = field(default_factory=dict)
    prediction_stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint_atol: float = 0.02
    created: str = ""

    # -- capture ---------------------------------------------------------------------------
    @classmethod
    def capture(
        cls,
        model: Any,
        inputs: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        projection: str = "auto",
        n_components: int = 16,
        embedding_layer: str | None = "auto",
        fit_inputs: torch.Tensor | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        class_names: Sequence[str] | None = None,
        metrics: Mapping[str, float] | None = None,
        fingerprint_atol: float = 0.02,
        num_probes: int = 16,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Profile ``model`` on raw held-out ``inputs`` (the validation split).

        Args:
            model: a ``Predictor``, an ``nn.Module``/LightningModule (normalized inputs ->
                logits; a ``ClassificationModule`` normalizes raw inputs itself) or a callable.
            inputs: ``(N, ...)`` raw inputs, as they will arrive in production.
            labels: ``(N,)`` true classes (for the temperature and the reference accuracy).
            projection: ``"auto"`` (tabular up to 64 features: ``"inputs"``, else ``"pca"``),
                ``"inputs"``, ``"pca"`` or ``"embedding"`` (torch modules only).
            n_components: principal components kept by ``"pca"`` / ``"embedding"``.
            embedding_layer: module whose input is the embedding (``"auto"``: last ``nn.Linear``).
            fit_inputs: raw inputs to fit the PCA on (e.g. the training split). Features of the
                data a PCA was fitted on are in-sample (too close to the subspace), which would
                make every live window look shifted; without ``fit_inputs`` the PCA is fitted on
                a random half of ``inputs`` and the other half is the feature reference.
            preprocess: raw -> model input, for modules that do not normalize themselves.
            class_names: names of the classes.
            metrics: test metrics to keep with the profile.
            fingerprint_atol: see the class attributes.
            num_probes: inputs kept to recognise the model later (half real, half synthetic).
            seed: seed of the synthetic probes.
        """
        check_choice("projection", projection, _PROJECTIONS)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or inputs.shape[0] < 8:
            raise MLCycleError(
                f"`inputs` must be a tensor of at least 8 samples (N, ...), but got "
                f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}."
            )
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(
                f"`n_components` must be a positive integer, but got n_components={n_components!r}."
            )
        x = inputs.float().cpu()
        if not torch.isfinite(x).all():
            raise MLCycleError(
                "`inputs` holds NaN or infinite values; profile clean held-out data."
            )
        if labels is not None and labels.shape[0] != x.shape[0]:
            raise MLCycleError(
                f"`labels` must have {x.shape[0]} entries, but got {labels.shape[0]}."
            )
        adapter = ModelAdapter(model, preprocess=preprocess, embedding_layer=embedding_layer)
        if projection == "auto":
            projection = "inputs" if x.ndim == 2 and x.shape[1] <= _MAX_RAW_FEATURES else "pca"
        if projection == "embedding" and not adapter.can_embed:
            raise MLCycleError(
                "`projection='embedding'` needs a torch module with a linear layer; use 'pca' for "
                f"a {type(model).__name__}."
            )
        probs = adapter.predict_proba(x)
        num_classes = probs.shape[1]
        arrays: dict[str, torch.Tensor] = {
            "pca_mean": torch.empty(0),
            "pca_components": torch.empty(0),
        }

        def base_of(raw: torch.Tensor) -> torch.Tensor:
            return adapter.embed(raw) if projection == "embedding" else raw.flatten(1)

        base = base_of(x)
        if projection in ("pca", "embedding") and (
            projection == "pca" or base.shape[1] > n_components
        ):
            if fit_inputs is not None:
                fit_base = base_of(torch.as_tensor(fit_inputs).float().cpu())
            else:
                perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
                half = x.shape[0] // 2
                fit_base, base = base[perm[:half]], base[perm[half:]]
            if fit_base.shape[1:] != base.shape[1:] or not torch.isfinite(fit_base).all():
                raise MLCycleError(
                    f"`fit_inputs` must be finite raw inputs shaped like `inputs` ({tuple(x.shape[1:])})."
                )
            k = min(n_components, base.shape[1], fit_base.shape[0] - 1)
            mean = fit_base.mean(0)
            # full SVD is exact and cheap at profile sizes (thousands x hundreds)
            _, _, vh = torch.linalg.svd(fit_base - mean, full_matrices=False)
            arrays["pca_mean"], arrays["pca_components"] = mean, vh[:k].T.contiguous()
        profile = cls(
            input_shape=tuple(int(s) for s in x.shape[1:]),
            num_classes=int(num_classes),
            class_names=list(class_names) if class_names else [str(i) for i in range(num_classes)],
            projection=projection,
            arrays=arrays,
            embedding_layer=adapter.embedding_layer if projection == "embedding" else None,
            metrics={str(k): float(v) for k, v in (metrics or {}).items()},
            fingerprint_atol=float(fingerprint_atol),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        raw_features = profile._reduce(base)
        arrays["feature_mean"] = raw_features.mean(0)
        arrays["feature_std"] = raw_features.std(0).clamp_min(1e-6)
        arrays["features"] = profile._standardize(raw_features)
        arrays["probs"] = probs
        arrays["labels"] = (
            labels.long().cpu() if labels is not None else torch.empty(0, dtype=torch.long)
        )
        if labels is not None:
            profile.temperature = fit_temperature(probs, labels)
        probe = _probe_inputs(x, num_probes, seed)
        arrays["probe_inputs"], arrays["probe_probs"] = probe, adapter.predict_proba(probe)
        profile.input_stats = input_statistics(x)
        profile.prediction_stats = profile._prediction_stats(probs, labels)
        return profile

    def _prediction_stats(self, probs: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
        conf = probs.max(1).values
        stats: dict[str, Any] = {
            "predicted_class_rates": (
                torch.bincount(probs.argmax(1), minlength=self.num_classes) / probs.shape[0]
            ).tolist(),
            "mean_confidence": float(conf.mean()),
            "confidence_quantiles": dict(
                zip(
                    ("q05", "q25", "q50", "q75", "q95"),
                    _quantiles(conf, (0.05, 0.25, 0.5, 0.75, 0.95)),
                    strict=True,
                )
            ),
            "estimated_accuracy": estimate_accuracy(probs, self.temperature),
            "calibrated_mean_confidence": float(
                calibrated_confidence(probs, self.temperature).mean()
            ),
        }
        if labels is not None:
            stats["label_rates"] = (
                torch.bincount(labels.long().cpu(), minlength=self.num_classes) / labels.shape[0]
            ).tolist()
            stats["accuracy"] = accuracy(probs, labels)
        return stats

    # -- projection ------------------------------------------------------------------------
    def _reduce(self, base: torch.Tensor) -> torch.Tensor:
        comps = self.arrays["pca_components"]
        if not comps.numel():
            return base
        centered = base - self.arrays["pca_mean"]
        z = centered @ comps
        # the distance to the PCA subspace catches what the kept components cannot see (noise,
        # texture); the classic SPE / Q statistic of PCA process monitoring (Jackson & Mudholkar 1979)
        residual = (centered - z @ comps.T).norm(dim=1, keepdim=True)
        return torch.cat([z, residual], dim=1)

    def _standardize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.arrays["feature_mean"]) / self.arrays["feature_std"]

    def features(self, raw: torch.Tensor, adapter: ModelAdapter | None = None) -> torch.Tensor:
        """The detector features of a raw batch (same projection and scaling as the reference)."""
        if self.projection == "embedding":
            if adapter is None or not adapter.can_embed:
                raise MLCycleError("This profile uses model embeddings: pass the torch model.")
            base = adapter.embed(raw.float())
        else:
            base = raw.float().flatten(1)
        return self._standardize(self._reduce(base))

    # -- identity --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Short hash of the model's outputs on the probe inputs (for logs and file names)."""
        probs = np.round(self.arrays["probe_probs"].numpy().astype(np.float64), 3)
        return hashlib.sha256(probs.tobytes()).hexdigest()[:16]

    def check_model(self, model: Any, adapter: ModelAdapter | None = None) -> None:
        """Raise :class:`MLCycleError` unless ``model`` is the model this profile was captured from.

        The model must take inputs of :attr:`input_shape`, return :attr:`num_classes` classes and
        reproduce the probe outputs within :attr:`fingerprint_atol`.
        """
        adapter = adapter or ModelAdapter(model, embedding_layer=None)
        probe = self.arrays["probe_inputs"]
        try:
            probs = adapter.predict_proba(probe)
        except Exception as err:  # the model cannot even take the profile's inputs
            raise MLCycleError(
                f"The profile (fingerprint {self.fingerprint}) is for inputs of shape {self.input_shape}, "
                f"and the model failed on them: {err}"
            ) from err
        if probs.shape[1] != self.num_classes:
            raise MLCycleError(
                f"The profile is for a model with {self.num_classes} classes, but the model returns "
                f"{probs.shape[1]}: it was captured from a different model."
            )
        diff = float((probs - self.arrays["probe_probs"]).abs().max())
        if diff > self.fingerprint_atol:
            raise MLCycleError(
                f"The profile (fingerprint {self.fingerprint}) was captured from a different model: "
                f"outputs on its probe inputs differ by up to {diff:.3g} (> fingerprint_atol="
                f"{self.fingerprint_atol}). Capture a new profile for this model, or raise "
                "`fingerprint_atol` for a quantized copy of the same model."
            )

    # -- disk ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready."""
        return {
            "version": PROFILE_VERSION,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "projection": self.projection,
            "embedding_layer": self.embedding_layer,
            "n_reference": int(self.arrays["features"].shape[0]),
            "n_features": int(self.arrays["features"].shape[1]),
            "temperature": self.temperature,
            "fingerprint_atol": self.fingerprint_atol,
            "metrics": self.metrics,
            "input_stats": self.input_stats,
            "prediction_stats": self.prediction_stats,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``profile.json`` and ``profile.npz`` into ``directory``; returns the JSON path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "profile.npz", **{k: self.arrays[k].cpu().numpy() for k in _ARRAYS}
        )
        path = out / "profile.json"
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        """Read a profile from its directory (or its ``profile.json``)."""
        p = Path(path)
        directory = p.parent if p.suffix == ".json" else p
        meta_path, arr_path = directory / "profile.json", directory / "profile.npz"
        if not meta_path.is_file() or not arr_path.is_file():
            raise MLCycleError(
                f"No reference profile in {directory}: expected profile.json and profile.npz "
                "(written by ReferenceProfile.save or the `monitor` stage)."
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != PROFILE_VERSION:
            raise MLCycleError(
                f"{meta_path}: profile version {meta.get('version')!r} is not supported "
                f"(this library reads version {PROFILE_VERSION})."
            )
        with np.load(arr_path, allow_pickle=False) as data:
            missing = [k for k in _ARRAYS if k not in data]
            if missing:
                raise MLCycleError(
                    f"{arr_path}: arrays {missing} are missing; the file is damaged."
                )
            arrays = {k: torch.from_numpy(np.array(data[k])) for k in _ARRAYS}
        profile = cls(
            input_shape=tuple(meta["input_shape"]),
            num_classes=int(meta["num_classes"]),
            class_names=list(meta["class_names"]),
            projection=meta["projection"],
            arrays=arrays,
            temperature=float(meta["temperature"]),
            embedding_layer=meta.get("embedding_layer"),
            input_stats=meta.get("input_stats", {}),
            prediction_stats=meta.get("prediction_stats", {}),
            metrics=meta.get("metrics", {}),
            fingerprint_atol=float(meta.get("fingerprint_atol", 0.02)),
            created=meta.get("created", ""),
        )
        if profile.fingerprint != meta.get("fingerprint"):
            raise MLCycleError(f"{directory}: profile.json and profile.npz do not belong together.")
        return profile


def _probe_inputs(x: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """Half real reference inputs, half Gaussian noise with the inputs' per-position scale.

    Well-trained models agree on clean inputs (both near probability 1), so the noise probes are
    what tells two models apart.
    """
    g = torch.Generator().manual_seed(seed)
    real = x[torch.randperm(x.shape[0], generator=g)[: max(1, num // 2)]]
    noise = torch.randn((max(1, num - real.shape[0]), *x.shape[1:]), generator=g)
    synthetic = x.mean(0) + noise * x.std(0).clamp_min(1e-3) * 1.5
    return torch.cat([real, synthetic]).contiguous()
