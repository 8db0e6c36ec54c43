"""torch.export / torchao PT2E plumbing shared by quantization-aware training (private).

Three things torchao leaves to the user, done here without touching its private parts:

* **Capture** with a dynamic batch dimension, with an error that names the module and says what to
  do when ``torch.export`` cannot trace it.
* **Folding batch norm** into the preceding convolution / linear layer on the captured graph
  (``torch.nn.utils.fusion``). torchao's simulated conv-BN QAT rewrites the graph with ~100
  exported patterns on ``convert_pt2e`` (minutes on a 2-core CPU); a graph without batch norm
  converts in about a second.
* **Train/eval switching** of an exported graph by flipping the ``training`` argument of its
  ``batch_norm`` and ``dropout`` nodes. torchao's ``move_exported_model_to_train/eval`` re-exports
  match patterns on every call (seconds), and Lightning switches modes around every validation
  loop. Observers are disabled in eval mode so validation data never moves the quantization ranges.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger(__name__)

#: GraphModule.meta key under which our QAT state lives (kept by deepcopy)
META_KEY = "lightning_mlcycle.qat"

_BN_TARGETS = (torch.ops.aten.batch_norm.default,)
_DROPOUT_TARGETS = (torch.ops.aten.dropout.default, torch.ops.aten.feature_dropout.default)
_CONV_TARGETS = (
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
)
_LINEAR_TARGETS = (torch.ops.aten.linear.default,)
#: layer types PT2E quantizers cannot quantize (recurrent cells are captured as opaque loops)
UNSUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)


def require_torchao() -> None:
    """Raise a clear error when torchao (the PT2E quantization back-end) is missing."""
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except ImportError as err:
        raise MLCycleError(
            "Quantization-aware training needs the torchao back-end, which is not installed "
            f"({err}). Install it with `pip install 'torchao>=0.18'`."
        ) from err


def check_quantizable(model: nn.Module) -> None:
    """Refuse models PT2E cannot quantize, naming the layer at fault."""
    has_target = False
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED_LAYERS):
            raise MLCycleError(
                f"Layer `{name or type(model).__name__}` ({type(module).__name__}) is not supported by "
                "quantization-aware training (PT2E quantizes convolution and linear layers). Quantize a "
                "sub-module without it (`module_name=`), or use dynamic post-training quantization "
                "(`quantize_dynamic_onnx`)."
            )
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            has_target = True
    if not has_target:
        raise MLCycleError(
            f"`{type(model).__name__}` has no nn.Linear or nn.Conv1d/2d/3d layer: quantization-aware "
            "training has nothing to quantize."
        )


def capture(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``torch.export`` the model (in its current mode) with a dynamic batch dimension."""
    if example.ndim == 0:
        raise MLCycleError("`example_input` must have a batch dimension, but got a 0-d tensor.")
    if example.shape[0] < 2:  # a batch of 1 specializes the batch dimension to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch.export raises many types (UserError, Unsupported, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MLCycleError(
            f"`{type(model).__name__}` cannot be captured by torch.export, which PT2E quantization "
            f"needs: {first}. Make its forward traceable (no data-dependent Python control flow, "
            "no .item()/.tolist() on tensors, no in-place tricks on inputs), or quantize a traceable "
            "sub-module with `module_name=`."
        ) from err
    gm = program.module()
    _functionalize_activations(gm)
    _split_shared_activations(gm)
    return gm


_STATELESS = ("ReLU", "ReLU6", "Hardtanh", "SiLU", "GELU", "Hardswish", "Hardsigmoid", "LeakyReLU",
              "Sigmoid", "Tanh", "Identity", "Dropout")


def _split_shared_activations(gm: torch.fx.GraphModule) -> int:
    """Give every call of a shared activation module its own source (quantizer partitions).

    torchvision's ResNet blocks call one ``self.relu`` twice; the quantizer groups nodes by module
    and then refuses a ReLU "partition" with two outputs. Each call is independent, so each node
    gets a distinct module path (``layer1.0.relu#1``) in its ``nn_module_stack`` metadata.
    """
    seen: dict[str, int] = {}
    split = 0
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
        if name not in _STATELESS:
            continue
        count = seen.get(fqn, 0)
        seen[fqn] = count + 1
        if count:
            stack = dict(stack)
            stack[key] = (f"{fqn}#{count}", cls)
            node.meta["nn_module_stack"] = stack
            split += 1
    return split


def _inplace_table() -> dict:
    aten = torch.ops.aten
    table = {aten.relu_.default: aten.relu.default, aten.add_.Tensor: aten.add.Tensor,
             aten.mul_.Tensor: aten.mul.Tensor, aten.hardtanh_.default: aten.hardtanh.default}
    for name in ("silu_", "hardswish_", "hardsigmoid_", "leaky_relu_"):
        inplace, functional = getattr(aten, name, None), getattr(aten, name.rstrip("_"), None)
        if inplace is not None and functional is not None:
            table[inplace.default] = functional.default
    return table


def _functionalize_activations(gm: torch.fx.GraphModule) -> int:
    """Turn in-place activations/residual adds on intermediate values into their functional ops.

    The training IR of ``torch.export`` keeps ``relu_`` and ``out += identity`` (ResNet) as in-place
    ops, and the x86 quantizer's conv-add-relu fusion then fails ("Input partition has more than one
    output node"). An in-place op whose input has no other user computes the same functionally;
    in-place updates of buffers (batch-norm counters) are left alone.
    """
    table = _inplace_table()
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in table:
            continue
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "call_function" and len(src.users) == 1:
            node.target = table[node.target]
            changed += 1
    if changed:
        gm.recompile()
    return changed


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(gm: nn.Module, target: str, value: torch.Tensor) -> None:
    *path, leaf = target.split(".")
    owner: Any = gm
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if leaf in owner._parameters:
        del owner._parameters[leaf]
    owner.register_parameter(leaf, nn.Parameter(value.detach().clone()))


@torch.no_grad()
def fold_batch_norm(gm: torch.fx.GraphModule) -> int:
    """Fold every conv/linear -> batch_norm pair of an exported graph into the conv/linear weights.

    Uses the running statistics (what the layer computes in eval mode), so after folding the batch
    statistics are frozen for the rest of training, as Krishnamoorthi (arXiv:1806.08342, sec. 3.2)
    recommends for the end of QAT. Returns the number of folded pairs; a batch norm that does not
    follow a conv/linear layer with one user is left in place.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    graph = gm.graph
    folded = 0
    folded_counters: set[str] = set()
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in _BN_TARGETS:
            continue
        layer = bn.args[0]
        if (
            not isinstance(layer, torch.fx.Node)
            or layer.target not in _CONV_TARGETS + _LINEAR_TARGETS
            or len(layer.users) != 1
        ):
            continue
        w_node = layer.args[1]
        b_node = layer.args[2] if len(layer.args) > 2 else None
        bn_w, bn_b, rm, rv = bn.args[1:5]
        eps = float(bn.args[7])
        if not (isinstance(w_node, torch.fx.Node) and w_node.op == "get_attr"):
            continue
        if not all(n is None or (isinstance(n, torch.fx.Node) and n.op == "get_attr") for n in (b_node, bn_w, bn_b, rm, rv)):
            continue
        weight = _attr(gm, w_node.target)
        bias = _attr(gm, b_node.target) if b_node is not None else None
        mean, var = _attr(gm, rm.target), _attr(gm, rv.target)
        gamma = _attr(gm, bn_w.target) if bn_w is not None else torch.ones_like(mean)
        beta = _attr(gm, bn_b.target) if bn_b is not None else torch.zeros_like(mean)
        if layer.target in _CONV_TARGETS:
            new_w, new_b = fuse_conv_bn_weights(weight, bias, mean, var, eps, gamma, beta)
        else:
            new_w, new_b = fuse_linear_bn_weights(weight, bias, mean, var, eps, gamma, beta)
        _set_param(gm, w_node.target, new_w)
        if b_node is not None:
            bias_target = str(b_node.target)
        else:
            prefix = w_node.target.rsplit(".", 1)[0] + "." if "." in w_node.target else ""
            bias_target = f"{prefix}bias"
            if _has_attr(gm, bias_target):
                bias_target = f"{prefix}folded_bias"
        _set_param(gm, bias_target, new_b)
        if b_node is None:
            with graph.inserting_before(layer):
                b_node = graph.get_attr(bias_target)
            args = list(layer.args)
            while len(args) < 3:
                args.append(None)
            args[2] = b_node
            layer.args = tuple(args)
        bn.replace_all_uses_with(layer)
        graph.erase_node(bn)
        stats_prefix = str(rm.target).rsplit(".", 1)[0]
        folded_counters.add(f"{stats_prefix}.num_batches_tracked" if "." in str(rm.target) else "num_batches_tracked")
        folded += 1
    # the batch-count increments of folded BNs are dead, but in-place ops are never eliminated
    for node in list(graph.nodes):
        if (
            node.op == "call_function"
            and node.target == torch.ops.aten.add_.Tensor
            and isinstance(node.args[0], torch.fx.Node)
            and str(node.args[0].target) in folded_counters
            and not node.users
        ):
            graph.erase_node(node)
    graph.eliminate_dead_code()
    gm.recompile()
    return folded


def _has_attr(gm: nn.Module, target: str) -> bool:
    try:
        _attr(gm, target)
    except AttributeError:
        return False
    return True


def has_batch_norm(gm: torch.fx.GraphModule) -> bool:
    """True when the graph still has batch_norm nodes."""
    return any(n.op == "call_function" and n.target in _BN_TARGETS for n in gm.graph.nodes)


def fake_quantizers(gm: nn.Module) -> list[nn.Module]:
    """The fake-quantize modules PT2E inserted (anything with ``enable_observer``)."""
    return [m for m in gm.modules() if hasattr(m, "enable_observer") and hasattr(m, "observer_enabled")]


def set_mode(gm: torch.fx.GraphModule, training: bool) -> None:
    """Put an exported (prepared) graph in train or eval mode, fast, honouring frozen BN/observers."""
    state = gm.meta.setdefault(META_KEY, {})
    bn_training = training and not state.get("bn_frozen", False)
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _BN_TARGETS and node.args[5] != bn_training:
            args = list(node.args)
            args[5] = bn_training
            node.args = tuple(args)
            changed = True
        elif node.target in _DROPOUT_TARGETS and node.args[2] != training:
            args = list(node.args)
            args[2] = training
            node.args = tuple(args)
            changed = True
    if changed:
        gm.recompile()
    observe = training and not state.get("observers_frozen", False)
    for fq in fake_quantizers(gm):
        fq.enable_observer(observe)
    for m in gm.modules():
        m.training = training
    state["training"] = training


def install_mode_switch(gm: torch.fx.GraphModule) -> None:
    """Make ``gm.train()`` / ``gm.eval()`` (and a parent's ``.train()``) call :func:`set_mode`."""

    def _train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
        set_mode(self, bool(mode))
        return self

    def _eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
        set_mode(self, False)
        return self

    gm.train = types.MethodType(_train, gm)  # type: ignore[method-assign]
    gm.eval = types.MethodType(_eval, gm)  # type: ignore[method-assign]


def is_prepared(module: Any) -> bool:
    """True for a graph this package prepared for QAT."""
    return isinstance(module, torch.fx.GraphModule) and META_KEY in getattr(module, "meta", {})
