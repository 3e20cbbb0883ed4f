"""Which process am I: the one place that reads ranks and world sizes (the data, distill and run layers all use it).

Three moments, three sources, one module:
- ``world_and_rank(trainer)``: inside a run, from the Lightning trainer, else torch.distributed, else (1, 0);
  ``is_distributed()`` / ``world_size()`` / ``global_rank()`` and the collectives ``all_reduce_sum`` /
  ``all_reduce_max`` for code without a trainer at hand (the LightningModule's step, the non-finite guard), which
  are no-ops in a single process;
- ``env_rank_and_world(rank, world)``: before any process group exists (``edgetam-cache-teacher`` under torchrun or
  srun), from explicit values, else torchrun's ``RANK``/``WORLD_SIZE``, else SLURM's, else (0, 1);
- ``env_local_rank()``: the same moment, the rank on the node (which GPU), from ``LOCAL_RANK`` / ``SLURM_LOCALID``;
- ``env_rank_is_zero()``: before Hydra writes the run directory, whether no launcher variable names a non-zero rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch.distributed is imported inside the functions: edgetam_train.config imports this module for its resolver, and
# `python train.py --help` / config errors answer before torch loads

# launcher variables that hold a global, node or local rank: torchrun (RANK, LOCAL_RANK, GROUP_RANK), Lightning's
# subprocess launcher (LOCAL_RANK, NODE_RANK), srun (SLURM_PROCID = global rank)
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def _env_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` set in ``env`` as an integer, else ``default``; a non-integer value is an error naming
    the variable."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r}: expected an integer") from None
    return default


def world_and_rank(trainer: Any = None) -> tuple[int, int]:
    """(world size, global rank) from a Lightning ``trainer``, else from torch.distributed, else (1, 0)."""
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    return world_size(), global_rank()


def is_distributed() -> bool:
    """Whether a torch.distributed process group is running (DDP); False in a single process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the torch.distributed group, 1 without one."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def global_rank() -> int:
    """This process's rank in the torch.distributed group, 0 without one."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over all ranks, in place (a collective: every rank must call it); unchanged without a process
    group. NCCL needs the tensor on the rank's GPU. Returns ``tensor``."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``'s elementwise maximum over all ranks, in place (a collective, as :func:`all_reduce_sum`)."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def env_rank_and_world(rank: int | None = None, world: int | None = None,
                       environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from the arguments, else torchrun's RANK/WORLD_SIZE, else SLURM's SLURM_PROCID/
    SLURM_NTASKS, else (0, 1). Raises ``ValueError`` when the rank is outside the world."""
    env = os.environ if environ is None else environ
    if rank is None:
        rank = _env_int(env, ("RANK", "SLURM_PROCID"), 0)
    if world is None:
        world = _env_int(env, ("WORLD_SIZE", "SLURM_NTASKS"), 1)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return rank, world


def env_local_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank on its node (which GPU it uses) before any process group exists: torchrun's
    ``LOCAL_RANK``, else SLURM's ``SLURM_LOCALID``, else 0."""
    return _env_int(os.environ if environ is None else environ, ("LOCAL_RANK", "SLURM_LOCALID"), 0)


def env_rank_is_zero(environ: Mapping[str, str] | None = None) -> bool:
    """True unless a launcher variable (``RANK_VARIABLES``) says this process has a non-zero global, node or local
    rank. A plain ``python train.py`` is rank 0; so is the process that Lightning's launcher starts the others from."""
    env = os.environ if environ is None else environ
    return all(_env_int(env, (name,), 0) == 0 for name in RANK_VARIABLES)


def rank_zero_or(value: Any, other: Any = None) -> Any:
    """``value`` on global rank 0, else ``other`` (OmegaConf resolver ``${rank_zero_or:value,other}``)."""
    return value if env_rank_is_zero() else other
