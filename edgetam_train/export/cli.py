"""``edgetam-export``: a training checkpoint (or an official ``.pt``) -> official / transformers / ONNX, checked.

Usage::

    edgetam-export CKPT --format official --out edgetam.pt
    edgetam-export CKPT --format hf --out edgetam-hf/            # EdgeTamModel / EdgeTamVideoModel directory
    edgetam-export CKPT --format onnx --out edgetam-onnx/        # the on-device split as ONNX graphs
    edgetam-export CKPT --format executorch --out edgetam-et/    # ... as ExecuTorch .pte (XNNPACK)
    edgetam-export CKPT --format tflite --quantize int8 --calibration images/ --out edgetam-tflite-int8/
    edgetam-export teacher.pt --model sam2.1_hiera_b+ --format hf --out sam2.1-b+-hf/

``CKPT`` is a Lightning checkpoint written by ``train.py`` (the student's weights, under ``student.``), an official
``{"model": state_dict}`` file or a bare state_dict. Checkpoints written by this project record their architecture
(trunk included) and input size, and the export rebuilds exactly that model; ``--model`` (a ``configs/arch`` name:
``edgetam``, ``edgetam_*``, ``sam2.1_hiera_t`` / ``_s`` / ``_b+`` / ``_l``) and ``--image-size`` (default 1024) are
for files without a record (official releases), and are errors when they contradict a record.

The on-device formats (onnx, executorch, tflite, coreml) write the split a tracking app runs (image encoder, prompt
decoder, memory encoder, memory attention), ``manifest.json`` and a README (:mod:`.ondevice_export`; docs/ondevice.md).

Every export reloads what it wrote, compares it with the source model on a fixed input, prints each check's max
absolute difference and exits with status 1 when one is above its tolerance (1e-4 for the torch formats, 1e-3 for
ONNX). Status 2: bad input, in one line: bad arguments, a checkpoint that does not match ``--model`` (the message
lists the missing and unexpected keys) or is not a checkpoint at all, an output that cannot be written (read-only,
a parent path that is a file, a full disk).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from edgetam_train.cli_common import IMAGE_SIZE_HELP, model_help
from edgetam_train.export.official import ExportCheckError, ExportReport, export_official, load_model
from edgetam_train.models.arch_record import describe
from edgetam_train.models.checkpoint import CheckpointMismatchError
from edgetam_train.progress import stage

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
    parser.add_argument("--model", default=None, help=model_help())
    parser.add_argument("--image-size", type=int, default=None, help=IMAGE_SIZE_HELP)
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="on-device formats: int8 post-training quantisation with the format's own quantiser")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of a few JPEG/PNG images to calibrate --quantize int8 on")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def run_export(checkpoint: Path, fmt: str, out: Path, model: str | None = None, image_size: int | None = None,
               quantize: str | None = None, calibration: Path | None = None) -> ExportReport:
    """Load ``checkpoint`` as ``model`` and export it in format ``fmt`` to ``out``; returns the check report.
    Each stage is announced on stderr with its time (:func:`edgetam_train.progress.stage`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if quantize and fmt in ("official", "hf"):
        raise ValueError(f"--quantize applies to the on-device formats, not --format {fmt}")
    with stage("edgetam-export", f"loading {checkpoint} as {model or 'the model its checkpoint names'}"):
        net = load_model(checkpoint, model, image_size)
    with stage("edgetam-export", f"writing {fmt} to {out} and checking it against the source model"):
        if fmt == "official":
            report = export_official(net, out, model)
        elif fmt == "hf":
            from edgetam_train.export.hf import export_hf

            report = export_hf(net, out, model)
        else:
            from edgetam_train.export.ondevice_export import export_ondevice

            record = getattr(net, "arch_record", None)
            name = describe(record) if record else (model or "edgetam")
            report = export_ondevice(net, out, fmt, name, checkpoint, quantize, calibration)
    report.arch = getattr(net, "arch_record", None)
    return report


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
    except OSError as err:  # read-only output, a parent path that is a file, a full disk: bad input, not status 1
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"edgetam-export: error: cannot write --out {args.out}: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"edgetam-export: error: {err}; the '{args.format}' format needs the export extra "
              f"(pip install 'edgetam-train[export]': transformers, safetensors, onnx, onnxruntime)", file=sys.stderr)
        return 2
    print(f"wrote {report.path} ({args.format}, model {describe(report.arch) if report.arch else args.model})")
    print(report.summary())
    if getattr(report, "note", None):
        print(report.note)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
