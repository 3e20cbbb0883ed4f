"""Train EdgeTAM: ``python train.py experiment=edgetam_distill`` (see README.md and configs/)."""

import hydra
from omegaconf import DictConfig

from edgetam_train.config import CONFIG_DIR, register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # imported here so that config errors, --help and --cfg answer before torch and Lightning load
    from edgetam_train.run.exits import run_or_exit
    from edgetam_train.run.train import train

    run_or_exit(lambda: train(cfg))  # a config mistake or a full / read-only disk: one line, exit 2


if __name__ == "__main__":
    main()
