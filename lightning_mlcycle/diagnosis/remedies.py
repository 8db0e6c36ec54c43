"""What to try for each symptom, ranked, with the ``mlcycle`` override that does it.

Under- and over-fitting follow the classic bias/variance table (Ng, *Machine Learning
Yearning*, ch. 25-27 and *Deep Learning Specialization*, "Basic recipe for machine learning");
the faults follow the repairs of AUTOTRAINER (ICSE 2021) and DeepDiagnosis (ICSE 2022).

Overrides are templates: ``{lr_down}``, ``{width_up}``... are filled from a context (the run's
current learning rate, width, dropout...) by :func:`remedies_for`; a template whose value is
unknown leaves the remedy without an override rather than guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_mlcycle.diagnosis.finding import Remedy, Symptom

#: (action, override template or None), most promising first.
REMEDIES: dict[Symptom, tuple[tuple[str, str | None], ...]] = {
    Symptom.UNDERFITTING: (
        ("use a bigger model (wider or deeper layers)", "model.backbone.width={width_up}"),
        ("use a bigger MLP", "model.backbone.hidden={hidden_up}"),
        ("reduce regularization: less dropout", "model.backbone.dropout={dropout_down}"),
        ("reduce regularization: less weight decay", "model.optimizer.weight_decay={wd_down}"),
        ("do error analysis: look at the training samples the model gets wrong", None),
        ("try a different architecture (e.g. a CNN for images)", "model=cnn"),
        ("tune the hyper-parameters (learning rate, schedule, optimizer) with a sweep "
         "(`mlcycle -m`)", "hparams_search=digits_optuna"),
        ("add input features (tabular data)", None),
    ),
    Symptom.OVERFITTING: (
        ("get more training data", None),
        ("add data augmentation", "data={augmented}"),
        ("more regularization: dropout", "model.backbone.dropout={dropout_up}"),
        ("more regularization: L2 / weight decay", "model.optimizer.weight_decay={wd_up}"),
        ("add normalization (batch / layer norm)", "model.backbone.batch_norm=true"),
        ("stop early and keep the best weights", "callbacks.early_stopping.patience=3"),
        ("do error analysis: compare validation errors with training errors", None),
        ("use a smaller model", "model.backbone.width={width_down}"),
        ("try a different architecture", None),
        ("tune the hyper-parameters with a sweep (`mlcycle -m`)", "hparams_search=digits_optuna"),
        ("remove input features that do not generalize (tabular data)", None),
    ),
    Symptom.VANISHING_GRADIENTS: (
        ("use a non-saturating activation (ReLU family)", "model.backbone.activation=relu"),
        ("add batch normalization", "model.backbone.batch_norm=true"),
        ("use He/Kaiming or Xavier initialization suited to the activation", None),
        ("use residual connections or a shallower network", None),
        ("raise the learning rate", "model.optimizer.lr={lr_up}"),
    ),
    Symptom.EXPLODING_GRADIENTS: (
        ("clip the gradient norm", "trainer.gradient_clip_val=1.0"),
        ("lower the learning rate", "model.optimizer.lr={lr_down}"),
        ("add batch normalization", "model.backbone.batch_norm=true"),
        ("use a smaller initialization (Xavier/He scale)", None),
        ("use mixed precision only with loss scaling; check for bad samples", None),
    ),
    Symptom.DYING_RELU: (
        ("use LeakyReLU / GELU instead of ReLU", "model.backbone.activation=leaky_relu"),
        ("lower the learning rate", "model.optimizer.lr={lr_down}"),
        ("re-initialize (He init, zero or small positive biases)", None),
        ("add batch normalization before the activation", "model.backbone.batch_norm=true"),
    ),
    Symptom.SATURATED_ACTIVATIONS: (
        ("use ReLU-family activations instead of sigmoid/tanh", "model.backbone.activation=relu"),
        ("add batch normalization before the activation", "model.backbone.batch_norm=true"),
        ("use Xavier initialization (smaller weights)", None),
        ("normalize the inputs", None),
    ),
    Symptom.OSCILLATING_LOSS: (
        ("lower the learning rate", "model.optimizer.lr={lr_down}"),
        ("use a larger batch", "data.batch_size={batch_up}"),
        ("use a decaying schedule or warm-up", None),
        ("clip the gradient norm", "trainer.gradient_clip_val=1.0"),
    ),
    Symptom.SLOW_CONVERGENCE: (
        ("raise the learning rate", "model.optimizer.lr={lr_up}"),
        ("train longer", "trainer.max_epochs={epochs_up}"),
        ("use an adaptive optimizer (Adam/AdamW)", None),
        ("add batch normalization", "model.backbone.batch_norm=true"),
        ("normalize the inputs", None),
    ),
    Symptom.DIVERGING_LOSS: (
        ("lower the learning rate", "model.optimizer.lr={lr_down}"),
        ("clip the gradient norm", "trainer.gradient_clip_val=1.0"),
        ("check the data and labels for NaN/inf and the loss for log(0)", None),
        ("use full precision or loss scaling", "trainer.precision=32-true"),
    ),
    Symptom.NO_LEARNING: (
        ("check that the labels match the samples (shuffled or wrong labels?)", None),
        ("check the loss function and that the model's output is used", None),
        ("change the learning rate (try x10 and /10)", None),
        ("check that gradients reach the parameters (frozen layers? detached tensors?)", None),
        ("use a bigger model", "model.backbone.width={width_up}"),
    ),
    Symptom.UNNORMALIZED_INPUTS: (
        ("standardize the inputs with training-split mean and std", None),
        ("scale images to [0, 1] and then standardize", None),
        ("add batch normalization at the input", "model.backbone.batch_norm=true"),
    ),
    Symptom.DATA_LEAKAGE: (
        ("remove validation samples that repeat training samples", "data.leakage=drop"),
        ("split by group (subject, session, source) instead of by sample", None),
        ("de-duplicate the data set before splitting", None),
    ),
}

#: Values used when the context does not say (chosen to be sensible on the default configs).
DEFAULT_CONTEXT: dict[str, Any] = {
    "width_up": 64,
    "width_down": 16,
    "hidden_up": "[256,128]",
    "dropout_up": 0.3,
    "dropout_down": 0.0,
    "wd_up": 0.001,
    "wd_down": 0.0,
    "augmented": "digits_augmented",
    "batch_up": 128,
}


def _num(v: float) -> str:
    return f"{v:.3g}"


def derived_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """Template values from a run's current settings.

    Args:
        values: any of ``lr``, ``width``, ``hidden`` (list), ``dropout``, ``weight_decay``,
            ``max_epochs``, ``batch_size``.

    Example:
        >>> ctx = derived_context({"lr": 0.003, "width": 32, "max_epochs": 15})
        >>> ctx["lr_down"], ctx["lr_up"], ctx["width_up"], ctx["epochs_up"]
        ('0.0003', '0.009', 64, 30)
    """
    out: dict[str, Any] = {}
    lr = values.get("lr")
    if isinstance(lr, (int, float)) and lr > 0:
        out["lr_down"], out["lr_up"] = _num(lr / 10), _num(lr * 3)
    width = values.get("width")
    if isinstance(width, int) and width > 0:
        out["width_up"], out["width_down"] = 2 * width, max(1, width // 2)
    hidden = values.get("hidden")
    if isinstance(hidden, (list, tuple)) and hidden and all(isinstance(h, int) for h in hidden):
        out["hidden_up"] = "[" + ",".join(str(2 * h) for h in hidden) + "]"
    dropout = values.get("dropout")
    if isinstance(dropout, (int, float)):
        out["dropout_up"] = round(min(0.5, max(0.3, dropout + 0.2)), 2)
        out["dropout_down"] = round(max(0.0, dropout / 2), 2) if dropout >= 0.1 else 0.0
    wd = values.get("weight_decay")
    if isinstance(wd, (int, float)):
        out["wd_up"] = _num(max(1e-3, wd * 10))
        out["wd_down"] = _num(wd / 10) if wd > 1e-6 else 0.0
    epochs = values.get("max_epochs")
    if isinstance(epochs, int) and epochs > 0:
        out["epochs_up"] = 2 * epochs
    batch = values.get("batch_size")
    if isinstance(batch, int) and batch > 0:
        out["batch_up"] = 2 * batch
    return out


def remedies_for(symptom: Symptom | str, context: Mapping[str, Any] | None = None) -> list[Remedy]:
    """The ranked remedies of ``symptom``, overrides filled from ``context``.

    Args:
        symptom: a :class:`Symptom` or its value.
        context: template values (see :func:`derived_context`); missing ones fall back to
            :data:`DEFAULT_CONTEXT`, and a template still unresolved drops the override.

    Example:
        >>> [r.override for r in remedies_for("exploding_gradients", {"lr_down": "0.0003"})][:2]
        ['trainer.gradient_clip_val=1.0', 'model.optimizer.lr=0.0003']
        >>> remedies_for("diverging_loss")[0].override is None  # learning rate unknown
        True
    """
    try:
        key = Symptom(symptom)
    except ValueError:
        raise ValueError(
            f"Expected argument `symptom` to be one of {[s.value for s in Symptom]}, "
            f"but got {symptom!r}."
        ) from None
    values = {**DEFAULT_CONTEXT, **(context or {})}
    out = []
    for action, template in REMEDIES[key]:
        override = None
        if template is not None:
            try:
                override = template.format(**values)
            except KeyError:
                override = None
        out.append(Remedy(action, override))
    return out
