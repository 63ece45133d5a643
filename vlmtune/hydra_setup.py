"""Hydra wiring shared by every recipe: typed schemas and the resolvers that conf/ uses.

Run directories must be the same on every rank of a multi-process launch, yet each rank resolves the config on
its own; `run_stamp` therefore derives the timestamp from the launcher process that all ranks share.
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from vlmtune.config import register_configs


def cache_dir() -> Path:
    """Where tiny parts and generated data live: $VLMTUNE_CACHE, else ~/.cache/vlmtune."""
    return Path(os.environ.get("VLMTUNE_CACHE") or Path.home() / ".cache" / "vlmtune")


# Whether this process was given its run stamp (by the process that started it, or by the user) rather than making
# one: machines of a multi-node run that each make their own would name different run directories.
STAMP_GIVEN = bool(os.environ.get("VLMTUNE_RUN_STAMP"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


@cache
def run_stamp() -> str:
    """A timestamp naming this run's directory, identical on all ranks of one launch."""
    if os.environ.get("VLMTUNE_RUN_STAMP"):
        return os.environ["VLMTUNE_RUN_STAMP"]
    moment = datetime.now()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import psutil  # accelerate depends on it

        # Ranks started by one `accelerate launch` / `torchrun` share the parent process: use its start time.
        moment = datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    stamp = moment.strftime("%Y%m%d-%H%M%S")
    # Processes this one starts inherit it: the jobs of a submitit sweep (each its own process, on other machines
    # under SLURM) and the ranks of a launch (vlmtune.launch) name the same sweep / run directory.
    os.environ["VLMTUNE_RUN_STAMP"] = stamp
    return stamp


def default_run_dir(runs: str) -> str:
    """runs/<recipe>/<stamp> for a single run; the sweep's per-job folder inside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return str(Path(hydra_cfg.sweep.dir) / str(hydra_cfg.sweep.subdir))
    return str(Path(runs) / hydra_cfg.job.name / run_stamp())


@cache
def setup() -> None:
    """Register schemas and resolvers once per process (recipes call this at import)."""
    from vlmtune.compat import explain_bitsandbytes_kernels_message

    explain_bitsandbytes_kernels_message()  # before a recipe imports peft, which imports bitsandbytes
    register_configs()
    OmegaConf.register_new_resolver("vlmtune_cache", lambda: str(cache_dir()))
    OmegaConf.register_new_resolver("run_stamp", run_stamp)
    OmegaConf.register_new_resolver("default_run_dir", default_run_dir)
    # conf/hydra/launcher/slurm.yaml: GPUs per node = processes / machines.
    OmegaConf.register_new_resolver("per_machine", lambda processes, machines: int(processes) // int(machines))
    # Only rank 0 writes Hydra's .hydra/ folder; other ranks would race it with identical files.
    OmegaConf.register_new_resolver("hydra_subdir_on_main", lambda: ".hydra" if _rank() == 0 else None)
    OmegaConf.register_new_resolver("rank_suffix", lambda: "" if _rank() == 0 else f".rank{_rank()}")
