"""Run one exported graph of the on-device split (``edgetam-export --format onnx|executorch|tflite``) by tensor name.

Every backend is a :class:`Graph`: ``graph(**inputs) -> {output name: array}`` with numpy float32 / int32 arrays in
the order and names of the model directory's ``manifest.json``. The toolchains are optional extras; a missing one
raises :class:`MissingToolchainError` naming the extra to install.

========== ============ ========================================================= ================================
runtime    file         Python runtime used                                       extra
========== ============ ========================================================= ================================
onnx       ``.onnx``    onnxruntime (CPU execution provider)                      ``edgetam-train[export]``
executorch ``.pte``     ExecuTorch runtime Python bindings (XNNPACK delegate)     ``edgetam-train[executorch]``
tflite     ``.tflite``  LiteRT interpreter (``ai_edge_litert``)                   ``edgetam-train[litert]``
coreml     ``.mlpackage`` none on Linux: Core ML runs only on macOS               ``edgetam-train[coreml]``
========== ============ ========================================================= ================================
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgetam_train.progress import native_output_to

SUFFIX = {"onnx": ".onnx", "executorch": ".pte", "tflite": ".tflite", "coreml": ".mlpackage"}
EXTRA = {"onnx": "export", "executorch": "executorch", "tflite": "litert", "coreml": "coreml"}
PACKAGES = {"onnx": "onnx, onnxruntime", "executorch": "executorch==1.5.1, torchao==0.18.0",
            "tflite": "litert-torch==0.10.0, ai-edge-litert", "coreml": "coremltools==9.0"}
MANIFEST = "manifest.json"
TFLITE_SIGNATURE = "points_{}"  # the LiteRT prompt decoder's signature for a point count


def tflite_signature(num_points: int) -> str:
    """The name of the decoder signature for ``num_points`` prompt points in a ``.tflite`` file."""
    return TFLITE_SIGNATURE.format(num_points)


class MissingToolchainError(ImportError, ValueError):
    """A format's toolchain is not installed; the message names the extra that installs it (a ValueError too, so the
    CLIs report it as bad input, exit status 2)."""

    def __init__(self, fmt: str, err: ImportError | None = None) -> None:
        detail = f" ({err})" if err is not None else ""
        super().__init__(f"the {fmt!r} format needs its toolchain{detail}: pip install 'edgetam-train[{EXTRA[fmt]}]' "
                         f"({PACKAGES[fmt]})")
        self.fmt = fmt


def read_manifest(model_dir: str | Path, required: tuple[str, ...] = ("format", "image_size", "parts")) -> dict:
    """``model_dir/manifest.json`` as a dict; ValueError naming the file when it is missing, not json, or lacks one
    of the ``required`` keys."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"--model-dir {model_dir}: no {MANIFEST} (write the directory with edgetam-export "
                         "--format onnx|executorch|tflite|coreml)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # a truncated copy: json names a line, not the file
        raise ValueError(f"{path}: not a readable json manifest ({type(err).__name__}: {err}); copy or export the "
                         "directory again") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a json object (an edgetam-export on-device manifest)")
    for key in required:
        if key not in manifest:
            raise ValueError(f"{path}: key {key!r} missing; expected an edgetam-export on-device manifest")
    return manifest


class Graph:
    """One exported graph: ``graph(**arrays) -> {output name: np.ndarray}``.

    Args:
        path: the graph file.
        inputs: input names in call order; outputs: output names in graph order.
    """

    def __init__(self, path: str | Path, inputs: list[str], outputs: list[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: graph file missing")
        self.inputs, self.outputs = list(inputs), list(outputs)

    def __call__(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in arrays]
        if missing:
            raise ValueError(f"{self.path.name}: inputs {missing} not given (expected {self.inputs})")
        values = self._run([np.ascontiguousarray(arrays[n]) for n in self.inputs])
        return dict(zip(self.outputs, values))

    def _run(self, values: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError


class OnnxGraph(Graph):
    def __init__(self, path, inputs, outputs, threads: int | None = None) -> None:
        super().__init__(path, inputs, outputs)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingToolchainError("onnx", err) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _run(self, values):
        return self.session.run(self.outputs, dict(zip(self.inputs, values)))


class ExecuTorchGraph(Graph):
    def __init__(self, path, inputs, outputs, threads: int | None = None) -> None:
        super().__init__(path, inputs, outputs)
        try:
            import torch
            with native_output_to(None):  # the runtime's cpuinfo probe prints lines the user can do nothing about
                from executorch.runtime import Runtime
        except ImportError as err:
            raise MissingToolchainError("executorch", err) from None
        self._torch = torch
        with native_output_to(None):
            runtime = Runtime.get()
        if threads:
            set_executorch_threads(threads)
        self.method = runtime.load_program(str(self.path)).load_method("forward")

    def _run(self, values):
        outs = self.method.execute([self._torch.from_numpy(v) for v in values])
        return [o.numpy() for o in outs]


def set_executorch_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK thread pool. It is one pool per process with a thread per core (2 here as soon as the
    bindings are imported), so without this a 1-thread run computed on two threads (a worker beside the caller) on a
    2-core machine. Reset it only when the size differs: the binding is named unsafe because it must not run during
    a call."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class TFLiteGraph(Graph):
    """LiteRT interpreter; litert-torch names the signature's inputs ``args_<i>`` and outputs ``output_<i>``. A file
    with several signatures is the prompt decoder, one signature per point count (:data:`TFLITE_SIGNATURE`): the
    call runs the one of its ``point_coords``' count."""

    def __init__(self, path, inputs, outputs, threads: int | None = None) -> None:
        super().__init__(path, inputs, outputs)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise MissingToolchainError("tflite", err) from None
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self.runners = {name: self.interpreter.get_signature_runner(name)
                        for name in self.interpreter.get_signature_list()}

    def _runner(self, values: list[np.ndarray]):
        if len(self.runners) == 1:
            return next(iter(self.runners.values()))
        n = values[self.inputs.index("point_coords")].shape[1]
        name = tflite_signature(n)
        if name not in self.runners:
            raise ValueError(f"{self.path.name}: {n} prompt points, but the file has signatures for "
                             f"{', '.join(sorted(self.runners, key=len))} only (export again with more points, or use "
                             "the onnx export: any count)")
        return self.runners[name]

    def _run(self, values):
        runner = self._runner(values)
        ins, outs = runner.get_input_details(), runner.get_output_details()
        out = runner(**{f"args_{i}": _to_tensor(v, ins[f"args_{i}"]) for i, v in enumerate(values)})
        return [_from_tensor(out[f"output_{i}"], outs[f"output_{i}"]) for i in range(len(self.outputs))]


def _to_tensor(value: np.ndarray, details: dict) -> np.ndarray:
    """A float input for a tensor the int8 converter made integer: quantised with the tensor's scale / zero point."""
    dtype = np.dtype(details["dtype"])
    if value.dtype == dtype or not np.issubdtype(dtype, np.integer) or not np.issubdtype(value.dtype, np.floating):
        return value
    scale, zero = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)


def _from_tensor(value: np.ndarray, details: dict) -> np.ndarray:
    """An integer output of a quantised tensor back to float32 (scale 0: not quantised, returned as is)."""
    scale, zero = details["quantization"]
    if not np.issubdtype(value.dtype, np.integer) or not scale:
        return value
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


GRAPHS = {"onnx": OnnxGraph, "executorch": ExecuTorchGraph, "tflite": TFLiteGraph}


def load_graph(runtime: str, path: str | Path, inputs: list[str], outputs: list[str],
               threads: int | None = None) -> Graph:
    """The :class:`Graph` of ``runtime`` for ``path``; ValueError for a runtime that cannot run on this machine."""
    if runtime == "coreml":
        raise ValueError("Core ML models run only on macOS / iOS (coremltools' predict needs macOS); on Linux the "
                         "export validates the Core ML spec but cannot run it")
    if runtime not in GRAPHS:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(GRAPHS)}")
    try:
        return GRAPHS[runtime](path, inputs, outputs, threads)
    except (MissingToolchainError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 -- each runtime has its own load errors (InvalidProtobuf, RuntimeError)
        raise ValueError(f"{path}: not a loadable {runtime} graph ({type(err).__name__}: {str(err).strip()[:300]}); "
                         "the file is truncated or damaged: copy or export the directory again") from None


def load_parts(model_dir: str | Path, manifest: dict | None = None, threads: int | None = None
               ) -> dict[str, Graph]:
    """All graphs listed in ``model_dir``'s manifest, loaded with the manifest's runtime."""
    manifest = manifest or read_manifest(model_dir)
    runtime = manifest["format"]
    try:
        listed = {name: (part["file"], [t["name"] for t in part["inputs"]], [t["name"] for t in part["outputs"]])
                  for name, part in manifest["parts"].items()}
    except (AttributeError, KeyError, TypeError) as err:
        raise ValueError(f"{Path(model_dir) / MANIFEST}: 'parts' must map each graph to its file, inputs and "
                         f"outputs ({type(err).__name__}: {err})") from None
    return {name: load_graph(runtime, Path(model_dir) / file, inputs, outputs, threads)
            for name, (file, inputs, outputs) in listed.items()}
