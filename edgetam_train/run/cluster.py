"""What multi-process and cluster runs need beyond Lightning's own plumbing.

- ``newest_resume_checkpoint``: ``ckpt_path=auto`` resumes from the newest loadable checkpoint of the run: normally
  ``checkpoints/last.ckpt`` or the ``hpc_ckpt_N.ckpt`` that Lightning's SLURM auto-requeue saves on the requeue
  signal; a damaged newer file is skipped (named, with the reason) in favour of the next newest.
- ``assign_wandb_run_ids``: one W&B run per training run: the id is stored in the run directory on a fresh start and
  reused when the run resumes (re-launch, SLURM requeue), so the curves continue in the same W&B run.
- ``check_no_secrets`` / ``RefuseSecrets``: the W&B API key comes only from the environment (``WANDB_API_KEY`` or
  ``wandb login``); a config or override that would carry a key into the run directory is refused before Hydra
  writes anything.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from edgetam_train.distributed import env_rank_is_zero
from edgetam_train.models.checkpoint import UnreadableCheckpointError, safe_load

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
# config keys that name credentials (matched on the last key component, case-insensitive); a bare ``key`` is the
# name ``wandb.login(key=...)`` uses, so ``+logger.wandb.key=...`` is one too (``key_points``, ``sort_key`` are not)
SECRET_KEY = re.compile(r"^key$|(^|_)(api_?key|apikey|token|secret|password|passwd)$", re.IGNORECASE)
# values shaped like a credential whatever their key: a W&B API key (40 hex digits, ``local-`` + 40 on W&B Server).
# Matched against a whole value (or a whole item of an override's value), so that a path holding a commit hash
# (a Hugging Face cache's snapshots/<sha>/...) is not taken for one
SECRET_VALUE = re.compile(r"(local-)?[0-9a-f]{40}")
SECRET_ENV = ("WANDB_API_KEY",)


def training_checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from (None: it can): unreadable (truncated, not a torch file) or not a
    Lightning training checkpoint. Reads only the archive's index and small objects (``mmap``), not the tensors."""
    try:
        obj = safe_load(path, mmap=True)
    except UnreadableCheckpointError as e:
        return e.reason
    if not isinstance(obj, dict):
        return f"holds a {type(obj).__name__}, not a Lightning training checkpoint"
    if "pytorch-lightning_version" not in obj or "state_dict" not in obj:
        if "model" in obj:
            return ("is an official weights file ({'model': state_dict}), not a training checkpoint: to start "
                    "training from these weights use model.init_from=<file> (and ckpt_path=null)")
        return f"is not a Lightning training checkpoint (keys {sorted(map(str, obj))[:8]})"
    return None


def resume_candidates(output_dir: str | Path) -> list[Path]:
    """Every checkpoint of a run, newest first: ``checkpoints/*.ckpt`` (``last.ckpt``, the step and best
    checkpoints) and the ``hpc_ckpt_<N>.ckpt`` that Lightning's SLURMEnvironment saves into
    ``trainer.default_root_dir`` when the requeue signal comes."""
    out = Path(output_dir)
    files = [p for p in [*out.glob("checkpoints/*.ckpt"), *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def newest_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recently written checkpoint of the run that loads as a training checkpoint (see
    ``resume_candidates``; normally ``checkpoints/last.ckpt`` or a newer ``hpc_ckpt_<N>.ckpt``); None when there is
    none. A damaged newer file (truncated by a full disk or a copy, not a checkpoint) is skipped with a warning that
    names it and why, so that a relaunch or SLURM requeue is never blocked by it."""
    for path in resume_candidates(output_dir):
        problem = training_checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("ckpt_path=auto: skipping %s: it %s; trying the next newest checkpoint of the run", path, problem)
    return None


# ---------------------------------------------------------------------------------------------- W&B run ids
def _wandb_nodes(logger_cfg: DictConfig | None) -> list[DictConfig]:
    return [node for node in (logger_cfg or {}).values()
            if isinstance(node, DictConfig) and node.get("_target_") == WANDB_LOGGER]


def new_wandb_run_id(run_name: str) -> str:
    """``<run_name>-<8 hex>``: readable in W&B URLs, unique across users and re-starts of the same run_name.
    Characters W&B does not accept in ids (anything but letters, digits, ``-_.``) become ``-``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-")[:48] or "run"
    return f"{slug}-{secrets.token_hex(4)}"


def assign_wandb_run_ids(logger_cfg: DictConfig | None, output_dir: str | Path, run_name: str, resuming: bool,
                         rank_zero: bool | None = None) -> str | None:
    """Fill ``id`` of every WandbLogger node whose ``id`` is null (``configs/logger/wandb.yaml``); returns the id.

    Args:
        logger_cfg: the ``logger`` config group (edited in place).
        output_dir: the run directory; the id lives in ``<output_dir>/wandb_run_id.txt``.
        run_name: prefix of a new id.
        resuming: training continues from a checkpoint: reuse the stored id (a fresh start, e.g. ``ckpt_path=null``
            in the same directory, gets a new W&B run, whose steps start again at 0).
        rank_zero: this process is global rank 0 (default: ``env_rank_is_zero()``). Only rank 0 writes the file;
            other ranks never start a W&B run (Lightning's WandbLogger is rank-zero only) and keep ``id`` null.
    """
    nodes = [n for n in _wandb_nodes(logger_cfg) if n.get("id") is None]
    if not nodes or not (env_rank_is_zero() if rank_zero is None else rank_zero):
        return None
    path = Path(output_dir) / WANDB_ID_FILE
    run_id = path.read_text().strip() if resuming and path.is_file() else ""
    if run_id:
        log.info("W&B: resuming run id %s (%s)", run_id, path)
    else:
        run_id = new_wandb_run_id(run_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
        log.info("W&B: new run id %s (saved to %s)", run_id, path)
    for node in nodes:
        node.id = run_id
    return run_id


# ---------------------------------------------------------------------------------------------- secrets
def _secret_values() -> list[str]:
    return [v for v in (os.environ.get(name, "") for name in SECRET_ENV) if len(v) >= 8]


def _where_secret(node: Any, path: str, values: list[str]) -> str | None:
    """The first key under ``node`` (plain dicts, lists, scalars) that names a credential or holds a secret value."""
    if isinstance(node, dict):
        for key, sub in node.items():
            sub_path = f"{path}.{key}" if path else str(key)
            if SECRET_KEY.search(str(key)):
                return f"{sub_path} (a credential key)"
            found = _where_secret(sub, sub_path, values)
            if found:
                return found
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            found = _where_secret(sub, f"{path}[{i}]", values)
            if found:
                return found
    elif isinstance(node, str):
        if any(v in node for v in values):
            return f"{path} (holds the value of ${SECRET_ENV[0]})"
        if any(f"oc.env:{name}" in node for name in SECRET_ENV):
            return f"{path} (reads ${SECRET_ENV[0]} into the config)"
        if "=" in node and SECRET_KEY.search(node.split("=", 1)[0].lstrip("+~").rsplit(".", 1)[-1]):
            return f"{path} (the override {node.split('=', 1)[0]}=...)"
        items = re.split(r"[\s,\[\]{}'\"=:]+", node.split("=", 1)[-1])
        if any(SECRET_VALUE.fullmatch(item) for item in items):
            return f"{path} (a value shaped like a W&B API key: 40 hex digits)"
    return None


def check_no_secrets(cfg: DictConfig, resolve: bool = True) -> None:
    """Raise ``ValueError`` when the config would carry a credential into the run directory (``config_resolved.yaml``,
    ``.hydra/``, the loggers' copies of the config): a key named like a credential (``api_key``, ``token``,
    ``password``, ``key``, ...), a value equal to ``$WANDB_API_KEY`` or shaped like a W&B API key (40 hex digits),
    or an interpolation reading it.

    Args:
        cfg: the composed config (with or without its ``hydra`` node).
        resolve: resolve interpolations first (train time); False checks the raw values (before Hydra's run
            directory exists, when ``${hydra:runtime.output_dir}`` cannot resolve yet).
    """
    plain = OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)
    found = _where_secret(plain, "", _secret_values())
    if found:
        raise ValueError(f"config key {found}: refusing to run, the run directory would store a credential. The W&B "
                         f"API key comes only from the environment (export WANDB_API_KEY=... or `wandb login`); "
                         f"remove it from the config and the command line")


class RefuseSecrets(Callback):
    """Hydra callback (``hydra.callbacks`` in ``configs/hydra/default.yaml``): runs ``check_no_secrets`` on the raw
    config and the command-line overrides before Hydra creates the run directory and writes ``.hydra/``.

    ``on_run_start`` runs after composing and before ``run_job`` creates the run directory and saves
    ``.hydra/{config,hydra,overrides}.yaml``, so a refused value is never written. Hydra turns exceptions raised in
    callbacks into warnings and goes on, so a refusal prints one line on stderr and exits with status 2 (bad input),
    without Hydra's "Error executing job with overrides: [...]" line, which would print the secret."""

    def _check(self, config: DictConfig) -> None:
        try:
            raw = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
            check_no_secrets(raw, resolve=False)
            overrides = OmegaConf.select(config, "hydra.overrides", default=None)
            if overrides is not None:
                check_no_secrets(overrides, resolve=False)
        except ValueError as e:
            print(f"Error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)
