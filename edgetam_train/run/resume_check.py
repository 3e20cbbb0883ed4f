"""Safe resume: a run continues only with the config it was trained with, or with changes that are safe or accepted.

Before anything is built, a run that resumes from a checkpoint compares its newly composed config (resolved) with the
one stored in the run directory (``config_resolved.yaml``, written by the previous launch):

- identical: resume;
- only keys in ``SAFE_KEYS`` differ (run length, logging, validation interval, loader workers, pictures): resume,
  log what changed and append it to ``<run dir>/config_changes.yaml``;
- anything else (learning rate, loss weights, data, architecture ...): stop before training with a
  ``ResumeConfigError`` that lists the differing keys and the two ways out: a new ``run_name`` (a new run directory),
  or ``accept_config_changes=[key,...]`` (a key accepts itself and everything under it), which is then recorded in
  ``config_changes.yaml`` next to the old and new values.

``ckpt_path`` and ``accept_config_changes`` themselves are never compared.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from edgetam_train.config import flatten_dict
from edgetam_train.distributed import env_rank_is_zero

log = logging.getLogger(__name__)

STORED_CONFIG = "config_resolved.yaml"
CHANGES_FILE = "config_changes.yaml"
ACCEPT_KEY = "accept_config_changes"
# keys (and everything under them) whose change does not alter what the resumed run trains
SAFE_KEYS: tuple[str, ...] = (
    "trainer.max_steps", "trainer.log_every_n_steps", "trainer.val_check_interval", "trainer.check_val_every_n_epoch",
    "trainer.limit_val_batches", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "data.num_workers", "data.pin_memory", "data.prefetch_factor", "data.persistent_workers",
    "logger", "callbacks.step_progress_bar", "callbacks.train_log", "callbacks.lr_monitor", "callbacks.throughput",
    "callbacks.mask_pictures", "callbacks.loss_curve", "callbacks.model_checkpoint.every_n_train_steps",
    "callbacks.model_checkpoint.save_top_k",
)
# keys that say how to launch, not what to train
IGNORED_KEYS: tuple[str, ...] = ("ckpt_path", ACCEPT_KEY)
ABSENT = "<absent>"


class ResumeConfigError(ValueError):
    """The resumed run's config differs from the stored one in keys that change what is trained."""


@dataclass
class ConfigChanges:
    """Differences between the stored and the new config, by key: (stored value, new value)."""

    safe: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    accepted: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    refused: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.safe or self.accepted or self.refused)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or below one of them (``a.b`` is under ``a``; ``ab`` is not)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    return dict(cfg)


def config_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Leaf keys (dotted) whose values differ between two plain nested configs, ``ABSENT`` for a missing key;
    lists compare as whole values. ``IGNORED_KEYS`` are left out."""
    a, b = flatten_dict(stored), flatten_dict(new)
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if not _under(k, IGNORED_KEYS) and a.get(k, ABSENT) != b.get(k, ABSENT)}


def classify_changes(diff: Mapping[str, tuple[Any, Any]], accepted: Iterable[str] = (),
                     safe_keys: Iterable[str] = SAFE_KEYS) -> ConfigChanges:
    """Sort a :func:`config_diff` into safe, accepted (under a key of ``accepted``) and refused changes."""
    accepted, safe_keys = list(accepted), list(safe_keys)
    out = ConfigChanges()
    for key, values in diff.items():
        if _under(key, safe_keys):
            out.safe[key] = values
        elif _under(key, accepted):
            out.accepted[key] = values
        else:
            out.refused[key] = values
    return out


def _accepted_keys(cfg: Mapping[str, Any] | DictConfig) -> list[str]:
    value = cfg.get(ACCEPT_KEY) if isinstance(cfg, (Mapping, DictConfig)) else None
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    raise ResumeConfigError(f"{ACCEPT_KEY}={value!r}: expected a list of config keys, e.g. "
                            f"{ACCEPT_KEY}=[model.optimizer.lr,data.max_masks]")


def check_accepted_keys_exist(accepted: Iterable[str], *configs: Mapping[str, Any]) -> None:
    """Refuse ``accept_config_changes`` entries that name no key of any of ``configs`` (neither a leaf nor a node
    above leaves): a typo there would otherwise accept nothing, silently, and the resume stop anyway or, worse,
    the user believe a change was recorded."""
    keys = set().union(*(flatten_dict(dict(c)) for c in configs))
    unknown = [a for a in accepted if not any(_under(k, [a]) for k in keys)]
    if unknown:
        raise ResumeConfigError(f"{ACCEPT_KEY}={unknown}: no such config key (expected keys of the config, e.g. "
                                f"model.optimizer.lr or a group above them such as model.optimizer; see "
                                f"`python train.py --cfg job` for the keys)")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and value != ABSENT else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lines(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items())


def refusal_message(changes: ConfigChanges, stored_path: Path, ckpt: str, run_name: str) -> str:
    """What the user reads when a resume is refused: the keys, their values, and the two ways out."""
    keys = ",".join(changes.refused)
    return (f"refusing to resume run '{run_name}' from {ckpt}: the config differs from the one it was trained with "
            f"({stored_path}) in keys that change what is trained:\n{_lines(changes.refused)}\n"
            f"Nothing was trained. Either\n"
            f"  - start a new run with this config: add run_name=<a new name> (a new run directory), or\n"
            f"  - continue this run with the change: add '{ACCEPT_KEY}=[{keys}]' (recorded in "
            f"{stored_path.parent / CHANGES_FILE}).")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_changes(output_dir: str | Path, changes: ConfigChanges, ckpt: str) -> Path:
    """Append one entry (time, checkpoint, safe and accepted changes with old and new values) to
    ``<output_dir>/config_changes.yaml``; returns its path."""
    path = Path(output_dir) / CHANGES_FILE
    entries = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    entries = list(entries or [])  # type: ignore[arg-type]
    entries.append({
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(ckpt),
        "safe": {k: {"old": old, "new": new} for k, (old, new) in changes.safe.items()},
        "accepted": {k: {"old": old, "new": new} for k, (old, new) in changes.accepted.items()},
    })
    _atomic_write(path, OmegaConf.to_yaml(OmegaConf.create(entries)))
    return path


def check_resume_config(cfg: DictConfig | Mapping[str, Any], output_dir: str | Path, ckpt: str | None,
                        rank_zero: bool | None = None) -> ConfigChanges:
    """Compare ``cfg`` with ``<output_dir>/config_resolved.yaml`` when the run resumes (``ckpt`` not None).

    Returns the changes (empty when not resuming, when identical, or when no stored config exists); safe and accepted
    changes are logged and, on global rank 0 (``rank_zero``, default from the environment), recorded in
    ``config_changes.yaml``. Raises :class:`ResumeConfigError` when any other key differs, or when
    ``accept_config_changes`` names a key the config does not have (checked on fresh runs too).
    """
    new = _plain(cfg)
    stored_path = Path(output_dir) / STORED_CONFIG
    if not ckpt or not stored_path.is_file():
        check_accepted_keys_exist(_accepted_keys(new), new)
    if not ckpt:
        return ConfigChanges()
    if not stored_path.is_file():
        log.warning("resuming from %s without %s: the config cannot be compared with the one the run was trained "
                    "with", ckpt, stored_path)
        return ConfigChanges()
    stored = OmegaConf.to_container(OmegaConf.load(stored_path), resolve=False)
    check_accepted_keys_exist(_accepted_keys(new), new, stored)  # type: ignore[arg-type]
    changes = classify_changes(config_diff(stored, new), _accepted_keys(new))  # type: ignore[arg-type]
    if changes.refused:
        raise ResumeConfigError(refusal_message(changes, stored_path, ckpt, str(new.get("run_name", "?"))))
    if changes.safe:
        log.info("resuming with changed settings (safe to change):\n%s", _lines(changes.safe))
    if changes.accepted:
        log.warning("resuming with changes accepted by %s:\n%s", ACCEPT_KEY, _lines(changes.accepted))
    if changes and (env_rank_is_zero() if rank_zero is None else rank_zero):
        log.info("config changes recorded in %s", record_changes(output_dir, changes, ckpt))
    return changes
