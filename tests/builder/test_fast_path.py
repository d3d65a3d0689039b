from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from jetfleet.package import ModelPackage


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def test_digits_package_has_the_promised_interface(digits_package: ModelPackage) -> None:
    card = digits_package.card
    assert digits_package.path.name.startswith(f"digits-1.0.0-{digits_package.sha256[:12]}")
    assert card.inputs[0].name == "input"
    assert card.inputs[0].shape == ["batch", 1, 8, 8]
    assert card.outputs[0].name == "logits"
    assert card.outputs[0].shape == ["batch", 10]
    assert card.labels == [str(i) for i in range(10)]
    assert card.variants == {"onnxruntime": "model.onnx", "tensorrt": "model.trt.onnx"}
    assert card.precision == {"onnxruntime": "int8", "tensorrt": "int8"}
    assert "pixel / 16.0" in card.provenance["preprocessing"]


def test_golden_vectors_pass_on_ort_cpu(digits_package: ModelPackage) -> None:
    golden = digits_package.golden()
    model = digits_package.variant("onnxruntime")
    result = golden.compare({"logits": _run(model, golden.inputs["input"])})
    assert result.ok, result.failures
    # a different model must not pass: the tolerance is meaningful
    wrong = _run(model, golden.inputs["input"][::-1].copy())
    assert not golden.compare({"logits": wrong}).ok


def test_variants_are_really_int8_with_the_right_quant_types(digits_package: ModelPackage) -> None:
    for runtime, act_type in (
        ("onnxruntime", onnx.TensorProto.UINT8),
        ("tensorrt", onnx.TensorProto.INT8),
    ):
        graph = onnx.load_from_string(digits_package.variant(runtime)).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        zero_points = [i for i in graph.initializer if "zero_point" in i.name]
        assert act_type in {z.data_type for z in zero_points}
        weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert weights, f"{runtime}: no int8 weights"


def test_card_records_accuracy_and_stages(digits_package: ModelPackage) -> None:
    card = digits_package.card
    cpu = card.metrics["variants"]["onnxruntime"]
    assert cpu["accuracy"] > 0.9
    assert cpu["top1_agreement"] > 0.95
    assert cpu["size_bytes"] < card.metrics["baseline_fp32"]["size_bytes"] / 3
    stages = [s["stage"] for s in card.stages]
    assert stages[:3] == ["train", "baseline", "export"]
    assert "quantize_onnxruntime" in stages
    assert "quantize_tensorrt" in stages
    for s in card.stages:
        assert {
            "stage",
            "size_bytes",
            "latency_ms_p50",
            "accuracy",
            "top1_agreement",
            "wall_s",
            "settings",
        } <= set(s)
    assert len(card.provenance["calibration"]["sha256"]) == 64
    assert card.provenance["exporter"] in ("dynamo", "legacy")
