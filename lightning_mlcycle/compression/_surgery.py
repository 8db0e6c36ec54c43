"""Shared machinery of the callbacks that replace layers during a fit (private).

Low-rank factorization and compact convolutions swap a layer for a small ``nn.Sequential``. The
callbacks do it at the start of an epoch, rebuild the optimizer around the new parameters, and
keep a *recipe* (layer name -> rank or multiplier) so a resumed checkpoint, whose keys and
shapes are those of the changed model, can be loaded: the recipe travels inside the checkpoint's
``state_dict`` and a load-state-dict pre-hook rebuilds the structure before the weights load
(Lightning restores the model before any callback state).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError

Recipe = dict[str, int]


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` of ``root``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class LayerSurgery(Callback):
    """Base of the layer-replacing callbacks.

    Applies ``transform(model) -> recipe`` at ``start_epoch``; ``rebuild(model, recipe)``
    restores the structure on resume.

    Args:
        start_epoch: epoch at whose start the layers are replaced (later epochs fine-tune).
        module: attribute of the LightningModule to change (e.g. ``"backbone"``), or None.
    """

    _name = "layer_surgery"

    def __init__(self, *, start_epoch: int = 0, module: str | None = None) -> None:
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise MLCycleError(f"`start_epoch` must be an integer >= 0, but got start_epoch={start_epoch!r}.")
        self.start_epoch = start_epoch
        self.module = module
        self.recipe: Recipe = {}
        self.done = False
        self._hook: Any = None

    transform: Callable[[nn.Module], Recipe]
    rebuild: Callable[[nn.Module, Recipe], None]

    @property
    def _recipe_key(self) -> str:
        return f"_{self._name}.{self.module or ''}"

    def target(self, pl_module: nn.Module) -> nn.Module:
        """The module that is changed."""
        return submodule(pl_module, self.module)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is None:
            self._hook = pl_module.register_load_state_dict_pre_hook(self._rebuild_before_load)

    def _rebuild_before_load(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                             *args: Any) -> None:
        entry = state_dict.pop(prefix + self._recipe_key, None)
        if not entry or self.done:
            return
        self.rebuild(self.target(module), dict(entry["recipe"]))
        self.load_state_dict(entry)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done or trainer.current_epoch < self.start_epoch:
            return
        recipe = self.transform(self.target(pl_module))
        self.recipe = trainer.strategy.broadcast(recipe, src=0)
        self.done = True
        # the replaced layers' parameters are new objects: the optimizer must hold them
        trainer.strategy.setup_optimizers(trainer)
        n_params = sum(p.numel() for p in pl_module.parameters())
        pl_module.log(f"{self._name}/params", float(n_params), on_step=False, on_epoch=True)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.done:
            checkpoint.setdefault("state_dict", {})[self._recipe_key] = self.state_dict()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"recipe": dict(self.recipe), "done": self.done}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recipe = {str(k): int(v) for k, v in state_dict.get("recipe", {}).items()}
        self.done = bool(state_dict.get("done", bool(self.recipe)))


def submodule(pl_module: nn.Module, name: str | None) -> nn.Module:
    """``pl_module`` itself (``name`` None) or its child ``name``; the error lists the valid ones."""
    if name is None:
        return pl_module
    sub = getattr(pl_module, name, None)
    if not isinstance(sub, nn.Module):
        valid = [n for n, _ in pl_module.named_children()]
        raise MLCycleError(f"`module`: the LightningModule has no sub-module {name!r}; valid: {valid}.")
    return sub


def load_recipe_file(
    path: str | os.PathLike[str], fmt: str, saver: str, model: nn.Module | None
) -> tuple[dict[str, Any], nn.Module]:
    """Read a file written by one of our ``save_*`` functions and the model to rebuild into.

    Loads with ``weights_only=True``, checks the ``format`` tag, and builds the original (not yet
    compressed) model from the saved Hydra config when ``model`` is None.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise MLCycleError(f"{path} is not a model saved by {saver} (format {fmt}).")
    if model is None:
        if not payload.get("builder"):
            raise MLCycleError(f"{path} holds no model config: pass the original model as `model=`.")
        from hydra.utils import instantiate

        model = instantiate(payload["builder"])
    assert model is not None
    return payload, model


_FORMAT = "lightning_mlcycle.layer_recipe/1"


def save_factorized(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    kind: str,
    recipe: Recipe,
    builder: Mapping[str, Any] | None = None,
) -> Path:
    """Save a low-rank (``kind="lowrank"``) or compact (``kind="compact"``) model as a recipe.

    The file holds layer name -> rank or depth multiplier, the weights and, optionally, the Hydra
    config of the original model. :func:`load_factorized` reads it with ``weights_only=True``.
    """
    if kind not in _REBUILDERS:
        raise MLCycleError(f"Expected argument `kind` to be one of {sorted(_REBUILDERS)}, but got {kind!r}.")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": _FORMAT, "kind": kind, "recipe": {str(k): int(v) for k, v in recipe.items()},
                "builder": dict(builder) if builder is not None else None,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, out)
    return out


def load_factorized(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_factorized`, in eval mode.

    The structure is rebuilt on ``model`` (a fresh instance of the original architecture) or on
    a model built from the saved Hydra config.

    Example:
        >>> import tempfile, pathlib
        >>> from lightning_mlcycle.compression import low_rank_factorize
        >>> net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> rep = low_rank_factorize(net, compression=0.5)
        >>> f = save_factorized(net, pathlib.Path(tempfile.mkdtemp()) / "m.pt", kind="lowrank", recipe=rep.ranks)
        >>> again = load_factorized(f, nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)))
        >>> torch.equal(again(torch.ones(1, 32)), net(torch.ones(1, 32)))
        True
    """
    payload, model = load_recipe_file(path, _FORMAT, "save_factorized", model)
    _REBUILDERS[payload["kind"]](model, payload["recipe"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()


def _rebuild_lowrank(model: nn.Module, recipe: Recipe) -> None:
    from lightning_mlcycle.compression.low_rank import apply_ranks

    apply_ranks(model, recipe)


def _rebuild_compact(model: nn.Module, recipe: Recipe) -> None:
    from lightning_mlcycle.compression.compact_conv import apply_compact

    apply_compact(model, recipe)


_REBUILDERS: dict[str, Callable[[nn.Module, Recipe], None]] = {
    "lowrank": _rebuild_lowrank,
    "compact": _rebuild_compact,
}
