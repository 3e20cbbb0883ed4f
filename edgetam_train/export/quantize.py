"""``--quantize int8``: post-training quantisation of the on-device split with each toolchain's own quantiser.

The image encoder (RepViT + FPN: nearly all of a frame's compute) is quantised statically to int8, weights
per-channel symmetric and activations per-tensor, calibrated on the images of ``--calibration DIR``
(preprocessed as the image predictor does):

========== ==========================================================================================
onnx       onnxruntime ``quantize_static`` (QDQ, per-channel int8 weights, int8 activations)
executorch torchao PT2E with ExecuTorch's ``XNNPACKQuantizer`` (symmetric, per-channel), lowered to XNNPACK
tflite     torchao PT2E with litert-torch's ``PT2EQuantizer`` (symmetric, per-channel, static)
coreml     ``coremltools.optimize`` linear symmetric int8 *weights* (activations stay float16)
========== ==========================================================================================

The prompt decoder, the memory encoder and memory attention stay float32: they are attention / LayerNorm heavy
(int8 softmax and LayerNorm lose accuracy, docs/ondevice.md) and small. The manifest's ``quantized`` map says
which scheme each file got.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..models.sam2_model import SAM2Model
from ..predictor.preprocess import image_to_input
from ..predictor.runtime_backends import MissingToolchainError
from ..predictor.video_state import FRAME_EXTENSIONS
from .converters import WRITERS, write_coreml, write_executorch, write_tflite

QUANTIZED_PARTS = ("image_encoder",)
SCHEMES = {"onnx": "int8 static QDQ (onnxruntime quantize_static, per-channel weights)",
           "executorch": "int8 static (PT2E XNNPACKQuantizer, per-channel weights)",
           "tflite": "int8 static (PT2E litert-torch quantizer, per-channel weights)",
           "coreml": "int8 weights (coremltools linear_quantize_weights), float16 activations"}


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
        with Image.open(path) as im:
            out.append(image_to_input(np.array(im.convert("RGB")), image_size))
    return out


def _pt2e(module: nn.Module, inputs: dict[str, Tensor], quantizer, batches: list[Tensor], fold: bool):
    """PT2E: export, prepare with ``quantizer``, calibrate on ``batches``, convert (``fold``: weights pre-quantised,
    as ExecuTorch needs; litert-torch wants them unfolded)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = tuple(inputs.values())
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(module, args).module(), quantizer)
        for pixels in batches:
            prepared(pixels)
        return convert_pt2e(prepared, fold_quantize=fold), args


def _executorch(module, inputs, outputs, path, batches) -> None:
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
    except ImportError as err:
        raise MissingToolchainError("executorch", err) from None
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    converted, args = _pt2e(module, inputs, quantizer, batches, fold=True)
    with torch.no_grad():
        write_executorch(torch.export.export(converted, args), inputs, outputs, path)


def _tflite(module, inputs, outputs, path, batches) -> None:
    try:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
    except ImportError as err:
        raise MissingToolchainError("tflite", err) from None
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    converted, _ = _pt2e(module, inputs, quantizer, batches, fold=False)
    write_tflite(converted, inputs, outputs, path, quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _onnx(module, inputs, outputs, path, batches) -> None:
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise MissingToolchainError("onnx", err) from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"pixels": b.numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        float_path, pre_path = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx"
        WRITERS["onnx"](module, inputs, outputs, float_path)
        quant_pre_process(str(float_path), str(pre_path))
        quantize_static(str(pre_path), str(Path(tmp) / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        shutil.move(str(Path(tmp) / "int8.onnx"), path)


def write_int8(fmt: str, name: str, module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path,
               model: SAM2Model, calibration: str | Path) -> str:
    """Write part ``name`` for ``--quantize int8`` (the image encoder quantised, the rest float); returns the scheme
    recorded in the manifest."""
    if name not in QUANTIZED_PARTS:
        WRITERS[fmt](module, inputs, outputs, path)
        return "float32"
    if fmt == "coreml":
        write_coreml(module, inputs, outputs, path, weights_int8=True)
        return SCHEMES[fmt]
    batches = calibration_pixels(calibration, model.image_size)
    {"onnx": _onnx, "executorch": _executorch, "tflite": _tflite}[fmt](module, inputs, outputs, path, batches)
    return SCHEMES[fmt]
