"""Every Hydra config under configs/ is usable: each ``_target_`` names an importable object, each option of each
config group composes with ``train.yaml`` and resolves, the documented experiment x debug pairs compose, and the
cheap groups (every callbacks option, logger=csv, trainer=cpu) instantiate.

Models are never built here (resolving their ``_target_`` is enough); everything that writes goes to ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra.utils
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from edgetam_train.config import CONFIG_DIR  # importing it registers the resolvers

YAMLS = sorted(CONFIG_DIR.rglob("*.yaml"))

# The experiment x debug pairs the configs' own comments and the docs name (each debug config says which experiment).
EXPERIMENT_DEBUG = [
    ("edgetam_distill", None), ("edgetam_distill", "default"), ("edgetam_distill", "fdr"),
    ("edgetam_distill", "overfit"), ("edgetam_distill", "quickstart"), ("edgetam_distill", "identity"),
    ("edgetam_distill_video", None), ("edgetam_distill_video", "quickstart_video"),
    ("edgetam_distill_video", "identity"), ("edgetam_finetune", None), ("learning_curve", None),
]


def _options(group: str) -> list[str]:
    """The option names of a config group folder (files starting with '_' are shared bases, not options)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


# group override key -> its folder under configs/
GROUPS = {"data": "data", "data/val": "data/val", "model": "model", "model/teacher": "model/teacher",
          "trainer": "trainer", "logger": "logger", "arch@model.student": "arch", "arch@model.teacher.net": "arch"}
GROUP_OPTIONS = [(key, option) for key, folder in GROUPS.items() for option in _options(folder)]


def _targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every ``_target_`` in a plain yaml tree (dicts and lists)."""
    if isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield sub, value
            else:
                yield from _targets(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{path}[{i}]")


def _unresolvable(targets: Iterator[tuple[str, Any]]) -> list[str]:
    """'key path: target (why)' of each target that is not a string naming an importable object."""
    bad = []
    for key, target in targets:
        if not isinstance(target, str):
            bad.append(f"{key}: {target!r} (not a string)")
            continue
        try:
            hydra.utils.get_object(target)
        except Exception as e:  # noqa: BLE001 - every failure is reported with its file and key
            bad.append(f"{key}: {target} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return bad


def test_every_target_in_the_yaml_files_resolves():
    """Each ``_target_`` string in each yaml under configs/ imports; the failures name the file and the key path."""
    assert YAMLS, f"no yaml files under {CONFIG_DIR}"
    bad = []
    for f in YAMLS:
        tree = yaml.safe_load(f.read_text())
        bad += [f"{f.relative_to(CONFIG_DIR)}: {line}" for line in _unresolvable(_targets(tree))]
    assert not bad, "_target_ values that do not resolve:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def hydra_configs() -> Iterator[None]:
    """Hydra initialised on configs/ once for the whole module (composition is the slow part)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        yield


def _compose(tmp_path: Path, *overrides: str) -> DictConfig:
    """train.yaml with ``overrides``, paths under ``tmp_path``, every interpolation resolved."""
    cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}",
                                      *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def _check_composed_targets(cfg: DictConfig, what: str) -> None:
    bad = _unresolvable(_targets(OmegaConf.to_container(cfg)))
    assert not bad, f"{what}: _target_ values that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize("experiment,debug", EXPERIMENT_DEBUG)
def test_experiment_and_debug_compose(hydra_configs, tmp_path, experiment, debug):
    overrides = [f"experiment={experiment}"] + ([f"debug={debug}"] if debug else [])
    cfg = _compose(tmp_path, *overrides)
    _check_composed_targets(cfg, " ".join(overrides))


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_each_group_option_composes(hydra_configs, tmp_path, group, option):
    cfg = _compose(tmp_path, f"{group}={option}")
    _check_composed_targets(cfg, f"{group}={option}")


@pytest.mark.parametrize("option", _options("callbacks"))
def test_each_callbacks_option_instantiates(hydra_configs, tmp_path, option):
    # a callback that monitors ${data.monitor} needs a data config that defines it: the fine-tuning experiment's
    monitored = "${data.monitor}" in (CONFIG_DIR / "callbacks" / f"{option}.yaml").read_text()
    experiment = ["experiment=edgetam_finetune"] if monitored else []
    cfg = _compose(tmp_path, *experiment, f"callbacks={option}")
    built = {name: instantiate(node) for name, node in (cfg.callbacks or {}).items()
             if isinstance(node, DictConfig) and "_target_" in node}
    if option == "none":
        assert not built
    else:
        assert built, f"callbacks={option} builds no callback"


def test_csv_logger_and_cpu_trainer_instantiate(hydra_configs, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cfg = _compose(tmp_path, "logger=csv", "trainer=cpu")
    loggers = [instantiate(node) for node in cfg.logger.values()]
    assert [type(logger) for logger in loggers] == [CSVLogger]
    assert Path(loggers[0].save_dir) == tmp_path / "out"
    trainer = instantiate(cfg.trainer, logger=loggers, enable_progress_bar=False)
    assert trainer.max_steps == cfg.trainer.max_steps and Path(trainer.default_root_dir) == tmp_path / "out"
