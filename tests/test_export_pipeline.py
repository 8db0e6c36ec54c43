"""export_model on a trained digits classifier: artifacts, parity, ONNX Runtime, card, Predictor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lightning_mlcycle import ClassificationModule, DigitsDataModule, MLCycleError
from lightning_mlcycle.export import (
    ModelInterface,
    OnnxRuntimeRunner,
    ParityError,
    Predictor,
    ProgramRunner,
    Tolerance,
    TvmRunner,
    check_parity,
    compare_outputs,
    export_model,
    export_program,
    load_model_card,
    tvm_available,
)
from lightning_mlcycle.models import MLP


def _train(dm: DigitsDataModule) -> ClassificationModule:
    """A small MLP trained for a few hundred steps with a plain loop (fast, > 90% on digits)."""
    torch.manual_seed(0)
    module = ClassificationModule(
        MLP(10, dm.input_shape, hidden=(32,)),
        num_classes=10,
        class_names=dm.class_names,
        input_shape=list(dm.input_shape),
        normalization=dm.normalization,
        backbone_config={
            "_target_": "lightning_mlcycle.models.MLP",
            "num_classes": 10,
            "input_shape": list(dm.input_shape),
            "hidden": [32],
        },
    )
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(8):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
    return module.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup()
    module = _train(dm)
    x_raw, y = dm.raw_split("test")
    x = (x_raw - dm.mean) / dm.std
    out = tmp_path_factory.mktemp("export")
    formats = ["onnx", "pt2"] + (["tvm"] if tvm_available() else [])
    result = export_model(
        module,
        out,
        test_data=(x, y),
        interface=ModelInterface.infer(module=module, datamodule=dm),
        formats=formats,
        batch_sizes=[1, 8, 64],
        warmup=1,
        repeats=3,
        metrics={"test/acc": 0.9},
        training_config={"lr": 0.01},
    )
    return {
        "dm": dm,
        "module": module,
        "x": x,
        "y": y,
        "x_raw": x_raw,
        "dir": out,
        "result": result,
    }


def test_every_artifact_loads_and_passes_parity(exported):
    res, d = exported["result"], exported["dir"]
    files = {a["file"] for a in res.artifacts}
    assert {"model.onnx", "model.pt2"} <= files
    assert res.parity and all(p.passed for p in res.parity)
    assert {p.runtime for p in res.parity} >= {"onnxruntime", "torch.export"}
    # load each artifact back, independently of export_model, and compare with the model
    x = exported["x"].numpy()
    ref = exported["module"](exported["x"]).detach().numpy()
    for runner in (OnnxRuntimeRunner(d / "model.onnx"), ProgramRunner(d / "model.pt2")):
        assert check_parity(runner, ref, x).max_abs_error < 1e-4
    for a in res.artifacts:
        assert a["parity"] and all(p["passed"] for p in a["parity"])
        assert a["bytes"] == (d / a["file"]).stat().st_size


def test_onnx_is_one_file_with_dynamic_batch(exported):
    d = exported["dir"]
    model = onnx.load(str(d / "model.onnx"), load_external_data=False)
    onnx.checker.check_model(model)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert (
        sum(t.ByteSize() for t in model.graph.initializer) > 32 * 64 * 4
    )  # the weights are inside
    sidecars = [p.name for p in d.iterdir() if p.suffix in ("", ".data", ".bin")]
    assert not sidecars
    runner = OnnxRuntimeRunner(d / "model.onnx")
    x = exported["x"].numpy()
    ref = exported["module"](exported["x"]).detach().numpy()
    for b in (1, 3, 100):  # the export sample had 2 (or the test split's) samples
        np.testing.assert_allclose(runner(x[:b]), ref[:b], atol=1e-4)


def test_latency_report_files_and_rows(exported):
    res, d = exported["result"], exported["dir"]
    report = json.loads((d / "latency.json").read_text())
    assert report["hardware"]["cpu"] and report["hardware"]["torch_threads"] >= 1
    cells = {(r["artifact"], r["runtime"], r["batch_size"]) for r in report["rows"]}
    for b in (1, 8, 64):
        assert ("model (eager)", "eager", b) in cells
        assert ("model.onnx", "onnxruntime", b) in cells
        if tvm_available():
            assert ("model_tvm.so", "tvm", b) in cells
    for r in res.latency:
        assert 0 < r.median_ms <= r.p95_ms + 1e-9
        assert r.throughput == pytest.approx(r.batch_size / (r.median_ms / 1000))
        assert r.accuracy is not None and r.accuracy > 0.85
    md = (d / "latency.md").read_text()
    assert "| model.onnx | onnxruntime | 64 |" in md


def test_card_describes_the_real_input(exported):
    d, dm = exported["dir"], exported["dm"]
    card = load_model_card(d)
    itf = card["interface"]
    graph_input = onnx.load(str(d / "model.onnx"), load_external_data=False).graph.input[0]
    dims = [x.dim_param or x.dim_value for x in graph_input.type.tensor_type.shape.dim]
    assert itf["input_name"] == graph_input.name
    assert dims[1:] == itf["input_shape"][1:] == list(dm.input_shape)
    assert isinstance(dims[0], str)  # dynamic batch
    assert itf["preprocessing"]["normalization"]["mean"] == pytest.approx(dm.normalization["mean"])
    assert itf["preprocessing"]["raw_range"] == [0.0, 16.0]
    assert card["class_names"] == dm.class_names
    assert card["metrics"]["test/acc"] == 0.9 and card["training_config"] == {"lr": 0.01}
    assert card["versions"]["torch"] and card["versions"]["onnxruntime"]
    assert card["latency"] and card["hardware"]["cpu"]
    md = (d / "model_card.md").read_text()
    assert "## Interface" in md and "## Latency" in md and "mean: [4.8" in md


def test_predictor_on_raw_digits_matches_the_lightning_model(exported):
    p = Predictor(exported["dir"])
    x_raw = exported["x_raw"]
    expected = exported["module"](exported["x"]).argmax(-1).numpy()
    images = x_raw[:, 0].numpy()  # (N, 8, 8) in [0, 16], as sklearn's load_digits gives them
    np.testing.assert_array_equal(p.predict(images), expected)
    np.testing.assert_array_equal(p.predict(images[0]), expected[:1])  # one image, no batch dim
    proba = p.predict_proba(images)
    assert proba.shape == (len(images), 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
    # the same digits as 8-bit grey PIL images (0..255), as a user would upload them
    from PIL import Image

    pil = [Image.fromarray(np.round(im / 16 * 255).astype(np.uint8)) for im in images[:100]]
    assert np.mean(p.predict(pil) == expected[:100]) >= 0.97
    assert p.card["name"] and p.class_names == [str(i) for i in range(10)]


def test_predictor_rejects_wrong_shapes(exported):
    p = Predictor(exported["dir"])
    with pytest.raises(MLCycleError, match=r"Expected raw inputs of shape \(1, 8, 8\)"):
        p.predict(np.zeros((3, 7, 7)))
    with pytest.raises(MLCycleError, match="as numbers"):
        p.predict(np.array(["a"]))


def test_tampered_and_truncated_onnx_are_refused(exported, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(exported["dir"], d)
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(MLCycleError, match="does not match the SHA-256 recorded in its model card"):
        Predictor(d)
    (d / "model.onnx").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(MLCycleError, match="ONNX Runtime cannot load .*truncated"):
        Predictor(d / "model.onnx", verify=False)
    (d / "model.onnx").write_bytes(b"")
    with pytest.raises(MLCycleError, match="is empty"):
        OnnxRuntimeRunner(d / "model.onnx")
    with pytest.raises(MLCycleError, match="No model card"):
        Predictor(tmp_path)
    with pytest.raises(MLCycleError, match="is not an ONNX artifact"):
        Predictor(d / "model.pt2")


def test_int8_onnx_files_are_checked_by_agreement(exported, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = tmp_path / "int8.onnx"
    quantize_dynamic(str(exported["dir"] / "model.onnx"), str(int8), weight_type=QuantType.QInt8)
    res = export_model(
        exported["module"],
        tmp_path / "out",
        test_data=(exported["x"], exported["y"]),
        formats=["pt2"],
        onnx_files={"int8_dynamic": int8},
        batch_sizes=[1, 8],
        warmup=0,
        repeats=2,
    )
    entry = next(a for a in res.artifacts if a["file"] == "model_int8_dynamic.onnx")
    assert entry["precision"] == "int8"
    par = entry["parity"][0]
    assert par["passed"] and par["agreement"] >= 0.97 and 0 < par["rel_l2_error"] < 0.25
    assert {(r.artifact, r.runtime) for r in res.latency} >= {
        ("model_int8_dynamic.onnx", "onnxruntime")
    }
    # a far stricter bound than int8 can meet fails loudly, with the measured numbers
    with pytest.raises(
        ParityError, match=r"Parity check failed for model_int8_dynamic.onnx .*class agreement"
    ):
        export_model(
            exported["module"],
            tmp_path / "strict",
            test_data=(exported["x"], exported["y"]),
            formats=["pt2"],
            onnx_files={"int8_dynamic": int8},
            batch_sizes=[1],
            warmup=0,
            repeats=1,
            tolerances={"int8": {"max_rel_l2": 1e-6}},
        )


@pytest.mark.skipif(not tvm_available(), reason="the tvm extra is not installed")
def test_tvm_module_from_program_and_from_onnx(exported, tmp_path):
    from lightning_mlcycle.export import compile_tvm

    d = exported["dir"]
    assert (d / "model_tvm.so").is_file()
    x = exported["x"].numpy()
    ref = exported["module"](exported["x"]).detach().numpy()
    assert check_parity(TvmRunner(d / "model_tvm.so"), ref, x).passed
    so = compile_tvm(d / "model.onnx", tmp_path / "from_onnx.so")
    out = TvmRunner(so)(x[:5])
    np.testing.assert_allclose(out, ref[:5], atol=1e-4)


# --- pure parity rules ------------------------------------------------------------------------
REF = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0], [1.0, 0.5, 0.0], [0.0, 0.0, 4.0]])


@pytest.mark.parametrize(
    ("output", "precision", "passed"),
    [
        (REF + 1e-6, "fp32", True),
        (REF + 1e-3, "fp32", False),
        (REF * 1.05, "int8", True),  # same classes, 5% error
        (REF[:, ::-1], "int8", False),  # other classes
        (REF * 1.5, "int8", False),  # same classes, 50% error
        (REF + 5e-3, "fp16", True),
        (np.full_like(REF, np.nan), "fp32", False),
    ],
)
def test_compare_outputs_rules(output, precision, passed):
    assert compare_outputs(output, REF, precision=precision).passed is passed


def test_parity_error_names_the_measured_error():
    def runner(x):
        return x[:, :3] + 0.01

    with pytest.raises(ParityError, match=r"max\|y - y_ref\| = 0.01 <= .*: no"):
        check_parity(
            runner, lambda x: x[:, :3], np.ones((4, 5), dtype=np.float32), artifact="m.onnx"
        )
    with pytest.raises(ValueError, match="`min_agreement` must be in"):
        Tolerance(min_agreement=2.0)
    with pytest.raises(ValueError, match="Expected argument `precision`"):
        compare_outputs(REF, REF, precision="int4")


# --- bad input --------------------------------------------------------------------------------
class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: a graph cannot hold both paths
            return self.fc(x)
        return -self.fc(x)


def test_data_dependent_control_flow_names_the_line():
    with pytest.raises(
        MLCycleError,
        match=r"data-dependent control flow at .*test_export_pipeline.py:\d+ "
        r"in forward\(\): `if x.sum\(\) > 0:",
    ):
        export_program(Branchy(), torch.randn(2, 4))


def test_export_model_validates_arguments(tmp_path):
    m = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="`formats` to be one of"):
        export_model(m, tmp_path, example=torch.zeros(2, 4), formats=["tflite"])
    with pytest.raises(ValueError, match="`batch_sizes` must be positive integers"):
        export_model(m, tmp_path, example=torch.zeros(2, 4), batch_sizes=[0])
    with pytest.raises(TypeError, match="`model` to be a torch.nn.Module"):
        export_model("model", tmp_path)
    with pytest.raises(MLCycleError, match="`onnx_files\\['q'\\]` is not a file"):
        export_model(
            m, tmp_path, example=torch.zeros(2, 4), onnx_files={"q": tmp_path / "nope.onnx"}
        )
    with pytest.raises(MLCycleError, match="the input shape is unknown"):
        export_model(m, tmp_path)
    with pytest.raises(MLCycleError, match="3 outputs but the interface names 2 classes"):
        export_model(
            m,
            tmp_path,
            example=torch.zeros(2, 4),
            formats=["pt2"],
            interface=ModelInterface((4,), ["a", "b"]),
        )
    if not tvm_available():
        with pytest.raises(MLCycleError, match="TVM is not installed"):
            export_model(m, tmp_path, example=torch.zeros(2, 4), formats=["tvm"])


def test_model_interface_validates():
    with pytest.raises(MLCycleError, match="`input_shape` must be positive sizes"):
        ModelInterface((0, 8), ["a", "b"])
    with pytest.raises(MLCycleError, match="at least 2 classes"):
        ModelInterface((4,), ["a"])
    with pytest.raises(MLCycleError, match=r"`normalization\['std'\]` must be positive"):
        ModelInterface((4,), ["a", "b"], {"mean": [0.0], "std": [0.0]})
    with pytest.raises(MLCycleError, match="has 3 values; expected 1, 2"):
        ModelInterface((2, 5, 5), ["a", "b"], {"mean": [0.0] * 3, "std": [1.0] * 3})
    with pytest.raises(MLCycleError, match="`raw_range` must be"):
        ModelInterface((4,), ["a", "b"], raw_range=(1, 0))
