"""Options and model loading shared by the command-line tools that run a checkpoint (``edgetam-predict image|video``,
``edgetam-eval miou``): ``--ckpt``, ``--model``, ``--image-size``, ``--device``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from edgetam_train.models.build import ALIASES, available_models, load_model_file
from edgetam_train.models.sam2_model import SAM2Model

MODEL_HELP = ("architecture (only for files that do not record theirs, e.g. official .pt files; a value that "
              "contradicts the file's record is an error): {names} (aliases: {aliases}); default: guessed from the "
              "weights' keys, edgetam")
IMAGE_SIZE_HELP = "model input side S (default: what the file records, else 1024; a different value is an error)"


def model_help() -> str:
    """The ``--model`` help text (names from configs/arch)."""
    return MODEL_HELP.format(names=", ".join(available_models()), aliases=", ".join(ALIASES))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ckpt`` (required), ``--model`` and ``--image-size`` (default: what the checkpoint records, see
    :func:`~edgetam_train.models.build.load_model_file`) and ``--device`` (default ``cuda`` when available, else
    ``cpu``) to ``parser``."""
    parser.add_argument("--ckpt", required=True, type=Path, help="Lightning checkpoint or official .pt")
    parser.add_argument("--model", default=None, help=model_help())
    parser.add_argument("--image-size", type=int, default=None, help=IMAGE_SIZE_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def load_model(args: argparse.Namespace) -> SAM2Model:
    """The model ``args.ckpt`` holds (its recorded architecture and size; ``args.model`` / ``args.image_size`` for
    files without a record), loaded strictly, on ``args.device`` (the options of :func:`add_model_arguments`).

    Raises ``ArchitectureMismatchError`` (a flag contradicts the record), ``CheckpointMismatchError`` (missing /
    unexpected / mis-shaped keys, naming the file), ``FileNotFoundError`` and ``ValueError`` (unknown model, bad
    image size); all are ValueErrors except FileNotFoundError."""
    return load_model_file(args.ckpt, args.model, args.image_size).to(args.device)


# name -> (help text, add_arguments(parser), run(args) -> exit status)
Subcommands = Mapping[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]]


def subcommand_parser(prog: str, description: str, subcommands: Subcommands) -> argparse.ArgumentParser:
    """A parser with one required sub-parser per entry of ``subcommands``; ``args.run`` is the chosen entry's run."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog="Exit status: 0 OK, 2 bad input.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(subcommands) + "}")
    for name, (help_text, add_arguments, run) in subcommands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def run_subcommand(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                   bad_input: tuple[type[BaseException], ...]) -> int:
    """Parse ``argv`` and run the chosen subcommand; an exception of a ``bad_input`` type is printed as
    ``<prog> <command>: error: ...`` on stderr and gives exit status 2."""
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except bad_input as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2


def check_output_folder(folder: Path, option: str = "--out") -> None:
    """Raise ValueError naming ``option`` when ``folder`` cannot become a folder to write into: it or a parent is a
    file, or its nearest existing parent is not writable. The CLIs call it before loading a model, so a bad ``--out``
    is found in a moment instead of as a traceback after the prediction."""
    for path in (folder, *folder.parents):
        if path.exists():  # False for a path under a file: the loop climbs to that file
            if not path.is_dir():
                raise ValueError(f"{option} {folder}: {path} is a file, not a folder")
            if not os.access(path, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {folder}: the folder {path} is not writable")
            return
