"""ONNX export shared by the compression and export stages (private).

Uses the dynamo exporter with a dynamic batch dimension and writes **one self-contained file**
(torch 2.14 defaults to ``external_data=True``, a weights sidecar; we keep the weights inside unless
the model is over ONNX's 2 GB protobuf limit).

The exporter annotates every node with debugging metadata: the Python stack trace (with the
absolute paths of the exporting machine's source files), the FX node, the class hierarchy. A
deployed file needs none of it, and on a small model it is a sizeable share of the file (the
digits CNN: 12 KB of 241 KB; after int8 quantization, 12 KB of 76 KB). Only the module path of each
node (``pkg.torch.onnx.name_scopes``) is kept unless ``debug_metadata=True``; :func:`compact_onnx`
also drops the shape annotations of intermediate tensors, which ONNX Runtime infers at load.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2 * 1024**3 - 1
#: node metadata kept in deployed files: which module a node came from, nothing machine-specific
_KEPT_NODE_METADATA = ("pkg.torch.onnx.name_scopes",)


def strip_debug_metadata(model: Any) -> int:
    """Drop the exporter's per-node / per-graph debugging metadata from an ``onnx_ir`` model.

    Returns the number of entries removed. Only ``pkg.torch.onnx.name_scopes`` stays on nodes.
    """
    import onnx_ir as ir

    removed = 0
    graphs = [model.graph]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        props = node.metadata_props
        for key in [k for k in props if k not in _KEPT_NODE_METADATA]:
            del props[key]
            removed += 1
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                graphs.append(attr.value)
    for graph in graphs:
        removed += len(graph.metadata_props)
        graph.metadata_props.clear()
    return removed


def to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
    debug_metadata: bool = False,
) -> Path:
    """Export ``model`` (in eval mode, on the CPU) to a single ONNX file at ``path``.

    Args:
        model: the module; it is exported as it is (call ``.eval()`` first if it has dropout/BN).
        example: one example batch (its batch size does not matter with ``dynamic_batch``).
        path: the ``.onnx`` file to write (parents are created).
        opset: ONNX opset version.
        dynamic_batch: make dimension 0 of input and output dynamic.
        input_name: name of the graph input.
        output_name: name of the graph output.
        debug_metadata: keep the exporter's stack traces and FX nodes on every node (see above).

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    external = n_bytes > _PROTOBUF_LIMIT
    kwargs: dict = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        kwargs["dynamic_shapes"] = ({0: batch},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            verbose=False,
            **kwargs,
        )
    assert program is not None
    if not debug_metadata:
        strip_debug_metadata(program.model)
    program.save(str(out), external_data=external)
    if not debug_metadata:
        compact_onnx(out)
    return out


def compact_onnx(path: str | os.PathLike[str]) -> dict[str, int]:
    """Drop what a deployed ONNX file does not need, in place; the graph computes exactly the same.

    * ``value_info``: shape annotations of intermediate tensors (ONNX Runtime infers them again
      when it loads the model; ``onnx.shape_inference`` restores them for viewers);
    * all-zero zero-point inputs of ``DequantizeLinear`` nodes on constant int32 tensors: quantized
      biases carry a zero point of 0 per channel, which is also ONNX's default when the input is
      omitted. (The int8 weights' zero points stay: ONNX Runtime fuses ``DQ -> Gemm -> Q`` into
      ``QGemm`` only when the weight's zero point is given.)
    * opset imports of domains no node uses (ONNX Runtime's quantizer declares nine).

    On the digits CNN these are about 5% of the int8 file. Returns what was removed
    (``{"value_info": n, "zero_points": n}``); files with external data are left as they are.

    Example:
        >>> import tempfile, onnx
        >>> from onnx import helper, TensorProto
        >>> w = helper.make_tensor("w", TensorProto.INT32, [2], [3, -4])
        >>> s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
        >>> z = helper.make_tensor("z", TensorProto.INT32, [], [0])
        >>> node = helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"])
        >>> out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
        >>> g = helper.make_graph([node], "g", [], [out], initializer=[w, s, z])
        >>> p = Path(tempfile.mkdtemp()) / "m.onnx"
        >>> onnx.save(helper.make_model(g), str(p))
        >>> compact_onnx(p), [i.name for i in onnx.load(str(p)).graph.initializer]
        ({'value_info': 0, 'zero_points': 1, 'opset_imports': 0}, ['w', 's'])
    """
    import onnx
    from onnx import numpy_helper

    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits.values()):
        return {"value_info": 0, "zero_points": 0, "opset_imports": 0}
    dropped = set()
    for node in model.graph.node:  # top-level graph: quantizers do not write QDQ inside subgraphs
        if node.op_type != "DequantizeLinear" or len(node.input) != 3 or node.domain not in ("", "ai.onnx"):
            continue
        if node.input[0] in inits and node.input[2] in inits:
            if inits[node.input[0]].data_type != onnx.TensorProto.INT32:
                continue
            if not numpy_helper.to_array(inits[node.input[2]]).any():
                dropped.add(node.input[2])
                del node.input[2]
    if dropped:
        used = _used_names(model.graph)
        kept = [t for t in model.graph.initializer if t.name not in dropped or t.name in used]
        model.graph.ClearField("initializer")
        model.graph.initializer.extend(kept)
    domains = _used_domains(model)
    opsets = [o for o in model.opset_import if o.domain in domains or o.domain in ("", "ai.onnx")]
    removed = {"value_info": len(model.graph.value_info), "zero_points": len(dropped),
               "opset_imports": len(model.opset_import) - len(opsets)}
    model.graph.ClearField("value_info")
    model.ClearField("opset_import")
    model.opset_import.extend(opsets)
    if any(removed.values()):
        onnx.save(model, str(p))
    return removed


def _nodes(graph: Any) -> Any:
    """Every node of an ONNX ``GraphProto`` and of the subgraphs in its nodes' attributes."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def _used_names(graph: Any) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads, and the graph outputs."""
    used = {o.name for o in graph.output}
    for node in _nodes(graph):
        used.update(node.input)
    return used


def _used_domains(model: Any) -> set[str]:
    """The operator domains the nodes of ``model`` (graph, subgraphs, local functions) use."""
    domains = {f.domain for f in model.functions}
    domains.update(node.domain for node in _nodes(model.graph))
    for function in model.functions:
        domains.update(node.domain for node in function.node)
    return domains
