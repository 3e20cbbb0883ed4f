"""``--quantize int8``: post-training quantisation of the on-device split with each toolchain's own quantiser.

The image encoder (RepViT + FPN: nearly all of a frame's compute) is quantised statically to int8, weights
per-channel symmetric and activations per-tensor, calibrated on the images of ``--calibration DIR``
(preprocessed as the image predictor does). The prompt decoder, the memory encoder and memory attention (most of
the bytes: transformer and perceiver weights) get int8 weights with *dynamic* activation quantisation of their
linear layers (the scale of each activation is taken at run time, so no calibration over memory banks or prompts
is needed); softmax, LayerNorm and the attention products stay float:

========== ===================================================== ================================================
format     image encoder (static)                                other graphs (dynamic)
========== ===================================================== ================================================
onnx       onnxruntime ``quantize_static`` (QDQ, per-channel)    onnxruntime ``quantize_dynamic`` (MatMul, Gemm)
executorch PT2E, ExecuTorch ``XNNPACKQuantizer`` (per-channel)   PT2E, ``XNNPACKQuantizer`` dynamic, ``nn.Linear``
tflite     PT2E, litert-torch ``PT2EQuantizer`` (per-channel)    PT2E, litert-torch ``PT2EQuantizer`` dynamic
coreml     ``coremltools.optimize`` int8 weights, float16 activations (every graph)
========== ===================================================== ================================================

Two graphs stay float32 because the toolchain cannot run them quantised (:data:`STAYS_FLOAT`, recorded with the
reason): ExecuTorch's memory encoder and LiteRT's memory attention.
The manifest's ``quantized`` map says which scheme each file got.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from edgetam_train.export.converters import WRITERS, exported_program, write_coreml, write_executorch, write_tflite
from edgetam_train.models.sam2_model import SAM2Model
from edgetam_train.predictor.preprocess import image_to_input
from edgetam_train.predictor.video_state import FRAME_EXTENSIONS
from edgetam_train.runtime.backends import MissingToolchainError

STAYS_FLOAT = {("executorch", "memory_encoder"): "XNNPACK does not lower its dynamically quantised linear layers: "
                                                 "quantized_decomposed out variants missing",
               ("tflite", "memory_attention"): "LiteRT's EMBEDDING_LOOKUP kernel rejects the dynamically quantised "
                                               "graph (zero point != 0)"}
STATIC_PARTS = ("image_encoder",)  # calibrated on --calibration images; the other graphs: dynamic int8
SCHEMES = {("onnx", "static"): "int8 static QDQ (onnxruntime quantize_static, per-channel weights)",
           ("onnx", "dynamic"): "int8 dynamic (onnxruntime quantize_dynamic, MatMul/Gemm weights per-channel)",
           ("executorch", "static"): "int8 static (PT2E XNNPACKQuantizer, per-channel weights)",
           ("executorch", "dynamic"): "int8 dynamic (PT2E XNNPACKQuantizer, linear weights per-channel)",
           ("tflite", "static"): "int8 static (PT2E litert-torch quantizer, per-channel weights)",
           ("tflite", "dynamic"): "int8 dynamic (PT2E litert-torch quantizer, linear/conv weights per-channel)",
           ("coreml", "static"): "int8 weights (coremltools linear_quantize_weights), float16 activations",
           ("coreml", "dynamic"): "int8 weights (coremltools linear_quantize_weights), float16 activations"}


def calibration_pixels(folder: str | Path, image_size: int, limit: int = 32) -> list[Tensor]:
    """Up to ``limit`` images of ``folder`` (sorted by name) preprocessed to (1, 3, S, S); ValueError when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--calibration {folder}: not a directory (expected a folder of JPEG/PNG images)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)[:limit]
    if not files:
        raise ValueError(f"--calibration {folder}: no {'/'.join(FRAME_EXTENSIONS)} images")
    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                out.append(image_to_input(np.array(im.convert("RGB")), image_size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            # PIL's UnidentifiedImageError is an OSError: without this the CLI reported "cannot write --out"
            raise ValueError(f"--calibration {folder}: {path.name} is not a readable image ({type(err).__name__}: "
                             f"{err}); remove it or replace it with a JPEG/PNG") from None
    return out


def _pt2e(module: nn.Module, inputs: dict[str, Tensor], quantizer, batches: list[dict[str, Tensor]], fold: bool):
    """PT2E: export (the decoder's point count dynamic), prepare with ``quantizer``, calibrate on ``batches``,
    convert (``fold``: weights pre-quantised, as ExecuTorch needs; litert-torch wants them unfolded)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with torch.no_grad():
        prepared = prepare_pt2e(exported_program(module, inputs, dynamic_points=True).module(), quantizer)
        for batch in batches:
            prepared(*batch.values())
        return convert_pt2e(prepared, fold_quantize=fold)


def _executorch(module, inputs, outputs, path, batches, dynamic: bool) -> None:
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as err:
        raise MissingToolchainError("executorch", err) from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    # dynamic: the nn.Linear layers only (quantising every op leaves dependency cycles in the XNNPACK partition)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config) if dynamic else XNNPACKQuantizer().set_global(
        config)
    converted = _pt2e(module, inputs, quantizer, batches, fold=True)
    write_executorch(exported_program(converted, inputs, dynamic_points=True), inputs, outputs, path,
                     dynamic_quant=dynamic)


def _tflite(module, inputs, outputs, path, batches, dynamic: bool) -> None:
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
    except ImportError as err:
        raise MissingToolchainError("tflite", err) from None
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = PT2EQuantizer().set_global(config)  # litert-torch lowers by the global config (set_module_type: no-op)
    # its elementwise patterns (add, mul, cat) also match integer index arithmetic of the encoder's graph, whose
    # histogram observer then fails ("histogram_cpu" not implemented for 'Long'): convolutions, linears, pools only
    quantizer.STATIC_OPS = [op for op in quantizer.STATIC_OPS
                            if op not in ("add", "add_relu", "mul", "mul_relu", "cat")]
    converted = _pt2e(module, inputs, quantizer, batches, fold=False)
    write_tflite(converted, inputs, outputs, path, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _onnx(module, inputs, outputs, path, batches, dynamic: bool) -> None:
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise MissingToolchainError("onnx", err) from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: v.numpy() for k, v in b.items()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        float_path, pre_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        WRITERS["onnx"](module, inputs, outputs, float_path)
        # dynamic: no symbolic shape inference (it fails on the memory graphs' reshapes); the pre-processing
        # still folds the shared weights, so each MatMul weight is stored once, as int8
        quant_pre_process(str(float_path), str(pre_path), skip_symbolic_shape=dynamic)
        if dynamic:
            quantize_dynamic(str(pre_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
        else:
            quantize_static(str(pre_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        shutil.move(str(int8_path), path)


def write_int8(fmt: str, name: str, module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path,
               model: SAM2Model, calibration: str | Path) -> str:
    """Write part ``name`` for ``--quantize int8`` (the image encoder static, the other graphs dynamic; see the
    module docstring); returns the scheme recorded in the manifest."""
    mode = "static" if name in STATIC_PARTS else "dynamic"
    if (fmt, name) in STAYS_FLOAT:
        WRITERS[fmt](module, inputs, outputs, path)
        return f"float32 ({STAYS_FLOAT[fmt, name]})"
    if fmt == "coreml":
        write_coreml(module, inputs, outputs, path, weights_int8=True)
        return SCHEMES[fmt, mode]
    if mode == "static":
        batches = [{"pixels": x} for x in calibration_pixels(calibration, model.image_size)]
    else:  # dynamic: the observers only need one pass to be placed
        batches = [inputs]
    {"onnx": _onnx, "executorch": _executorch, "tflite": _tflite}[fmt](module, inputs, outputs, path, batches,
                                                                      mode == "dynamic")
    return SCHEMES[fmt, mode]
