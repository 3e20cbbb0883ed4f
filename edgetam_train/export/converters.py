"""Write one graph of the on-device split in one format: ONNX, ExecuTorch (.pte, XNNPACK), LiteRT (.tflite), Core ML.

Each writer takes the export-only module, its example inputs (an ordered ``{name: tensor}``), the output names and
the path, and returns the path written. Toolchains are imported here, lazily; a missing one raises
:class:`~edgetam_train.runtime.backends.MissingToolchainError` naming the extra.

Shapes are fixed at the example inputs' shapes, except the decoder's number of prompt points, which every format
takes without padding (padding points change SAM's output): ONNX keeps the number of prompt sets and points dynamic
(as the image-path ONNX export always did); ExecuTorch and Core ML the number of points (1 .. :data:`MAX_POINTS`, a
bounded dynamic shape: one XNNPACK program, one Core ML range dimension). LiteRT has no dynamic shapes for this
graph (its MLIR lowering rejects the symbolic dimension), so its decoder file holds one signature per point count,
``points_1`` .. ``points_<TFLITE_POINTS>``, sharing one copy of the weights. :func:`point_range` says which counts a
format takes; the manifest records it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from edgetam_train.export.onnx import _export
from edgetam_train.progress import native_output_to
from edgetam_train.runtime.backends import MissingToolchainError, tflite_signature

MAX_POINTS = 16
TFLITE_POINTS = 8  # decoder signatures of a .tflite file: a box and up to 6 clicks (each adds ~10 s of conversion)
POINT_INPUTS = ("point_coords", "point_labels")


def point_range(fmt: str) -> tuple[int, int | None]:
    """(min, max) prompt points the format's decoder takes (max None: unbounded)."""
    return 1, {"onnx": None, "tflite": TFLITE_POINTS}.get(fmt, MAX_POINTS)


def with_points(inputs: dict[str, Tensor], num_points: int) -> dict[str, Tensor]:
    """``inputs`` with ``point_coords`` / ``point_labels`` cut or tiled to ``num_points`` points."""
    out = dict(inputs)
    for name in POINT_INPUTS:
        x = inputs[name]
        reps = -(-num_points // x.shape[1])
        out[name] = x.repeat(1, reps, *([1] * (x.dim() - 2)))[:, :num_points].contiguous()
    return out


def _dynamic_onnx(inputs: dict[str, Tensor], outputs: list[str]) -> dict | None:
    if "point_coords" not in inputs:
        return None
    axes = {"point_coords": {0: "num_prompts", 1: "num_points"}, "point_labels": {0: "num_prompts", 1: "num_points"},
            "mask_input": {0: "num_prompts"}, "has_mask_input": {0: "num_prompts"}}
    axes.update({name: {0: "num_prompts"} for name in outputs})
    return axes


def write_onnx(module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path) -> Path:
    """ONNX opset 17 (legacy TorchScript exporter, as :mod:`~edgetam_train.export.onnx`)."""
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise MissingToolchainError("onnx", err) from None
    with torch.no_grad():
        _export(module, tuple(inputs.values()), path, list(inputs), outputs, _dynamic_onnx(inputs, outputs))
    return path


def onnx_input_names(path: Path) -> list[str]:
    """The inputs an ONNX file kept: the exporter drops inputs the graph does not read (EdgeTAM's memory encoder
    ignores ``object_score_logits``, its memory attention ``obj_ptr_tpos``)."""
    import onnx

    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


def exported_program(module: nn.Module, inputs: dict[str, Tensor], dynamic_points: bool = False):
    """``torch.export`` of ``module`` on ``inputs`` (the decoder's point count dynamic when asked)."""
    dynamic = None
    if dynamic_points and "point_coords" in inputs:
        n = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
        dynamic = {name: ({1: n} if name in POINT_INPUTS else None) for name in inputs}
    with torch.no_grad():
        return torch.export.export(module, tuple(inputs.values()), dynamic_shapes=dynamic)


def write_executorch(module: nn.Module | torch.export.ExportedProgram, inputs: dict[str, Tensor], outputs: list[str],
                     path: Path, dynamic_quant: bool = False) -> Path:
    """ExecuTorch program lowered to the XNNPACK delegate (``module`` may be a quantized ExportedProgram;
    ``dynamic_quant``: its dynamically quantised linear layers are partitioned first, as XNNPACK requires)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackDynamicallyQuantizedPartitioner,
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as err:
        raise MissingToolchainError("executorch", err) from None
    program = module if isinstance(module, torch.export.ExportedProgram) else exported_program(
        module, inputs, dynamic_points=True)
    partitioners = [XnnpackDynamicallyQuantizedPartitioner()] if dynamic_quant else []
    with native_output_to(path.with_name(path.name + ".convert.log")):  # _pytree deprecations, cpuinfo lines
        lowered = to_edge_transform_and_lower(program, partitioner=[*partitioners, XnnpackPartitioner()]
                                              ).to_executorch()
    path.write_bytes(lowered.buffer)
    return path


def write_tflite(module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path,
                 quant_config=None) -> Path:
    """LiteRT flatbuffer through litert-torch (inputs ``args_<i>``, outputs ``output_<i>`` in the given order); the
    prompt decoder gets one signature per point count (:func:`tflite_signature`), the weights stored once."""
    try:
        import litert_torch
    except ImportError as err:
        raise MissingToolchainError("tflite", err) from None
    # the converter prints hundreds of lines of its own (MLIR passes, TF logging): kept in <graph>.convert.log
    with native_output_to(path.with_name(path.name + ".convert.log")):
        kwargs = {"quant_config": quant_config} if quant_config is not None else {}
        if "point_coords" not in inputs:
            litert_torch.convert(module, tuple(inputs.values()), **kwargs).export(str(path))
            return path
        converter = litert_torch
        for n in range(1, TFLITE_POINTS + 1):
            converter = converter.signature(tflite_signature(n), module, tuple(with_points(inputs, n).values()))
        converter.convert(**kwargs).export(str(path))
    return path


def write_coreml(module: nn.Module, inputs: dict[str, Tensor], outputs: list[str], path: Path,
                 weights_int8: bool = False) -> Path:
    """Core ML ML program (iOS 17, float16 compute) through coremltools' ``torch.export`` path, named outputs;
    ``weights_int8``: linear symmetric int8 weights (coremltools.optimize)."""
    try:
        import coremltools as ct
    except ImportError as err:
        raise MissingToolchainError("coreml", err) from None
    program = _drop_aliases(exported_program(module, inputs, dynamic_points=True).run_decompositions({}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                        outputs=[ct.TensorType(name=n) for n in outputs])
        if weights_int8:
            import coremltools.optimize.coreml as cto

            config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
            ml = cto.linear_quantize_weights(ml, config)
    ml.save(str(path))
    return path


def _drop_aliases(program):
    """Replace ``aten.alias`` nodes (a full-length slice, e.g. RoPE self-attention's ``k[:, :, :N]``) by their input:
    coremltools 9 has no conversion for them."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()
    return program


def coreml_spec(path: Path) -> dict[str, list[tuple[str, tuple]]]:
    """Inputs and outputs of a saved ``.mlpackage`` read back from its spec: ``{"inputs": [(name, shape)], ...}``;
    a flexible dimension reads ``(lower, upper)``."""
    try:
        import coremltools as ct
    except ImportError as err:
        raise MissingToolchainError("coreml", err) from None
    spec = ct.utils.load_spec(str(path))

    def dims(array):
        ranges = array.shapeRange.sizeRanges if array.WhichOneof("ShapeFlexibility") == "shapeRange" else []
        if not ranges:
            return tuple(int(d) for d in array.shape)
        return tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else (int(r.lowerBound), int(r.upperBound))
                     for r in ranges)

    def rows(items):
        return [(i.name, dims(i.type.multiArrayType)) for i in items]

    return {"inputs": rows(spec.description.input), "outputs": rows(spec.description.output),
            "spec_version": int(spec.specificationVersion)}


WRITERS = {"onnx": write_onnx, "executorch": write_executorch, "tflite": write_tflite, "coreml": write_coreml}
