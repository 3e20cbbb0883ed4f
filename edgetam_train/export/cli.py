"""``edgetam-export``: a training checkpoint (or an official ``.pt``) -> official / transformers / ONNX, checked.

Usage::

    edgetam-export CKPT --format official --out edgetam.pt
    edgetam-export CKPT --format hf --out edgetam-hf/            # EdgeTamModel / EdgeTamVideoModel directory
    edgetam-export CKPT --format onnx --out edgetam-onnx/        # the on-device split as ONNX graphs
    edgetam-export CKPT --format executorch --out edgetam-et/    # ... as ExecuTorch .pte (XNNPACK)
    edgetam-export CKPT --format tflite --quantize int8 --calibration images/ --out edgetam-tflite-int8/
    edgetam-export teacher.pt --model sam2.1_hiera_b+ --format hf --out sam2.1-b+-hf/

``CKPT`` is a Lightning checkpoint written by ``train.py`` (the student's weights, under ``student.``), an official
``{"model": state_dict}`` file or a bare state_dict. ``--model`` names the architecture (a ``configs/arch`` name:
``edgetam`` by default, ``sam2.1_hiera_t`` / ``_s`` / ``_b+`` / ``_l`` for teachers); ``--image-size`` the input side
(default 1024; the official models use 1024).

The on-device formats (onnx, executorch, tflite, coreml) write the split a tracking app runs (image encoder, prompt
decoder, memory encoder, memory attention), ``manifest.json`` and a README (:mod:`.ondevice_export`; docs/ondevice.md).

Every export reloads what it wrote, compares it with the source model on a fixed input, prints each check's max
absolute difference and exits with status 1 when one is above its tolerance (1e-4 for the torch formats, 1e-3 for
ONNX). Status 2: bad arguments or a checkpoint that does not match ``--model`` (the message lists the missing and
unexpected keys).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models.build import ALIASES, available_models
from ..models.checkpoint import CheckpointMismatchError
from .official import ExportCheckError, ExportReport, export_official, load_model

FORMATS = ("official", "hf", "onnx", "executorch", "tflite", "coreml")


def build_parser() -> argparse.ArgumentParser:
    """The ``edgetam-export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="edgetam-export", description="Export a trained EdgeTAM / SAM 2.1 checkpoint and check the export.",
        epilog="Exit status: 0 checked OK, 1 an export differs from the source above tolerance, 2 bad input.")
    parser.add_argument("checkpoint", type=Path, help="Lightning checkpoint (.ckpt) or official .pt")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="official: {'model': state_dict} .pt; hf: transformers directory; onnx / executorch / "
                             "tflite / coreml: the on-device split (4 graphs + manifest.json)")
    parser.add_argument("--out", required=True, type=Path, help="output file (official) or directory (hf, onnx)")
    parser.add_argument("--model", default="edgetam",
                        help=f"architecture: {', '.join(available_models())} (aliases: {', '.join(ALIASES)})")
    parser.add_argument("--image-size", type=int, default=None, help="input side S (default: the config's, 1024)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="on-device formats: int8 post-training quantisation with the format's own quantiser")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of a few JPEG/PNG images to calibrate --quantize int8 on")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def run_export(checkpoint: Path, fmt: str, out: Path, model: str = "edgetam", image_size: int | None = None,
               quantize: str | None = None, calibration: Path | None = None) -> ExportReport:
    """Load ``checkpoint`` as ``model`` and export it in format ``fmt`` to ``out``; returns the check report."""
    if quantize and fmt in ("official", "hf"):
        raise ValueError(f"--quantize applies to the on-device formats, not --format {fmt}")
    net = load_model(checkpoint, model, image_size)
    if fmt == "official":
        return export_official(net, out, model)
    if fmt == "hf":
        from .hf import export_hf

        return export_hf(net, out, model)
    if fmt in ("onnx", "executorch", "tflite", "coreml"):
        from .ondevice_export import export_ondevice

        return export_ondevice(net, out, fmt, model, checkpoint, quantize, calibration)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 OK, 1 check failed, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run_export(args.checkpoint, args.format, args.out, args.model, args.image_size, args.quantize,
                            args.calibration)
    except ExportCheckError as err:
        print(f"edgetam-export: check failed: {err}", file=sys.stderr)
        return 1
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as err:
        print(f"edgetam-export: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"edgetam-export: error: {err}; the '{args.format}' format needs the export extra "
              f"(pip install 'edgetam-train[export]': transformers, safetensors, onnx, onnxruntime)", file=sys.stderr)
        return 2
    print(f"wrote {report.path} ({args.format}, model {args.model})")
    print(report.summary())
    if getattr(report, "note", None):
        print(report.note)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
