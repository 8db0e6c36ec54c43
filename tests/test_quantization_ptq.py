"""ONNX Runtime post-training quantization: static (calibrated) and dynamic, and the measurements."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from lightning_mlcycle import MLCycleError
from lightning_mlcycle._onnx import to_onnx
from lightning_mlcycle.compression.ptq import (
    count_ops,
    file_size,
    onnx_accuracy,
    onnx_latency_ms,
    quantize_dynamic_onnx,
    quantize_static_onnx,
    session,
)

pytest.importorskip("onnxruntime")


def _data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for c in range(4):
        r, k = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 1.0
    return x, y


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory) -> tuple:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 4),
    )
    x, y = _data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(4):
        for i in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(net(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    path = to_onnx(net, x[:2], tmp_path_factory.mktemp("ptq") / "fp32.onnx")
    return net, path, x, y


def test_static_ptq_is_qdq_accurate_and_smaller(trained_cnn, tmp_path) -> None:
    net, fp32, x, y = trained_cnn
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    q = quantize_static_onnx(fp32, tmp_path / "int8.onnx", batches, num_batches=4)
    ops = count_ops(q)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert file_size(q) < file_size(fp32) / 2  # int8 weights; scales and graph weigh in at this size
    acc32, acc8 = onnx_accuracy(fp32, batches), onnx_accuracy(q, batches)
    assert acc32 > 0.8
    assert acc8 >= acc32 - 0.05
    out32 = session(fp32).run(None, {"input": x[:64].numpy()})[0]
    out8 = session(q).run(None, {"input": x[:64].numpy()})[0]
    assert np.abs(out8 - out32).max() < 0.1 * np.abs(out32).max()
    assert onnx_latency_ms(q, (1, 8, 8), 4, repeats=3, warmup=1) > 0


def test_files_carry_no_debug_metadata_and_no_zero_zero_points(trained_cnn, tmp_path) -> None:
    """Deployed files hold no stack traces / local paths, and no all-zero weight zero points."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantFormat, quantize_static

    from lightning_mlcycle.compression.ptq import _reader

    net, fp32, x, _ = trained_cnn
    raw = fp32.read_bytes()
    assert b"stack_trace" not in raw and b"test_quantization_ptq.py" not in raw
    assert b"pkg.torch.onnx.name_scopes" in raw  # which module each node came from is kept
    debug = to_onnx(net, x[:2], tmp_path / "debug.onnx", debug_metadata=True)
    assert b"stack_trace" in debug.read_bytes() and file_size(debug) > file_size(fp32)

    batches = [x[i : i + 32] for i in range(0, 128, 32)]
    ours = quantize_static_onnx(fp32, tmp_path / "int8.onnx", batches, num_batches=4, preprocess=False,
                                reduce_range=True)
    plain = tmp_path / "plain.onnx"  # ONNX Runtime's quantizer alone, same settings
    quantize_static(str(fp32), str(plain), _reader(fp32, batches, 4), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=True)
    model = onnx.load(str(ours))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and len(node.input) == 3:
            assert inits[node.input[0]].dtype != np.int32, f"{node.name}: int32 bias keeps its zero point"
    assert not model.graph.value_info
    assert file_size(ours) < file_size(plain)
    feed = {"input": x[:64].numpy()}
    np.testing.assert_array_equal(session(ours).run(None, feed)[0], session(plain).run(None, feed)[0])
    # and ONNX Runtime fuses the same integer kernels (QLinearConv, QGemm) in both
    fused = []
    for path in (ours, plain):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        fused.append(count_ops(options.optimized_model_filepath))
    assert fused[0] == fused[1] and fused[0]["QGemm"] == 1 and fused[0]["QLinearConv"] == 2


def test_dynamic_ptq_linear_model(tmp_path) -> None:
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    x = torch.randn(8, 64)
    fp32 = to_onnx(mlp, x[:2], tmp_path / "mlp.onnx")
    q = quantize_dynamic_onnx(fp32, tmp_path / "mlp8.onnx")
    ops = count_ops(q)
    assert ops["DynamicQuantizeLinear"] > 0 or ops["MatMulInteger"] > 0
    with torch.no_grad():
        ref = mlp(x).numpy()
    out = session(q).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()


def test_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(MLCycleError, match="does not exist"):
        quantize_static_onnx(tmp_path / "missing.onnx", tmp_path / "o.onnx", [])
    with pytest.raises(ValueError, match="`activation_type`"):
        quantize_static_onnx(tmp_path / "missing.onnx", tmp_path / "o.onnx", [], activation_type="int4")
    with pytest.raises(ValueError, match="`calibration`"):
        quantize_static_onnx(tmp_path / "m.onnx", tmp_path / "o.onnx", [], calibration="mse")
    with pytest.raises(MLCycleError, match="is empty"):
        mlp = nn.Sequential(nn.Linear(4, 2))
        onnx_accuracy(to_onnx(mlp, torch.randn(2, 4), tmp_path / "a.onnx"), [])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MLCycleError, match=r"onnxruntime.*pip install"):
        quantize_dynamic_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx")
