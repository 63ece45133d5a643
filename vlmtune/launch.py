"""Run a recipe on several processes through `accelerate launch`, with a launcher profile from conf/launcher/.

`vlmtune sft launcher=zero3 launcher.num_processes=8` composes its config, writes the profile as an accelerate
config file (<run_dir>/accelerate_config.yaml) and re-executes the same recipe with the same overrides under
`accelerate launch --config_file`; the ranks then see they are inside a launch and train. Nothing here starts
processes itself: accelerate (torchrun, or DeepSpeed's launcher across machines) does.

Signals: SIGTERM, SIGINT and SLURM's early-warning signals (USR1/USR2, used by submitit) reach the ranks as SIGTERM,
which makes them write a step checkpoint and stop (vlmtune.train.preemption); once they have, a handler that was there
before (submitit's checkpoint-and-requeue) runs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from vlmtune.errors import ConfigError
from vlmtune.processes import launched_engine

log = logging.getLogger("vlmtune")

LAUNCHED = "VLMTUNE_LAUNCHED"  # set for the ranks of a launch this module started
RESULT_FILE = "VLMTUNE_RESULT_FILE"  # where rank 0 writes the recipe's return value for the process that launched it
SHARDED = ("DEEPSPEED", "FSDP")


class LaunchError(ConfigError):
    """A launcher profile that cannot run as configured (on this machine, with these settings)."""


def inside_launch() -> bool:
    """True in a process that `accelerate launch` or torchrun started (one rank of a run)."""
    return os.environ.get(LAUNCHED) == "1" or "LOCAL_RANK" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ


def refuse_fsdp_without_gpu() -> None:
    """accelerate runs an FSDP config on a machine without a GPU as plain DDP, silently: refuse instead."""
    import torch

    if launched_engine() == "FSDP" and not torch.cuda.is_available():
        raise LaunchError(
            "this run was launched with an FSDP accelerate config, but this machine has no GPU: accelerate would run "
            "it as plain data parallel (every process holding the whole model), not sharded. FSDP needs GPUs; on a "
            "CPU use launcher=ddp, launcher=zero2 or launcher=zero3.")


def engine(launcher) -> str:
    """The accelerate distributed_type a launcher profile asks for: NO, MULTI_GPU, DEEPSPEED, FSDP."""
    return str(launcher.accelerate.get("distributed_type", "NO")).upper()


def check_profile(launcher) -> None:
    """Refuse profiles that cannot run as asked, before any process starts."""
    import importlib.util

    import torch

    kind = engine(launcher)
    if launcher.num_processes < 1 or launcher.num_machines < 1:
        raise LaunchError("launcher.num_processes and launcher.num_machines must be at least 1")
    if kind == "NO" and launcher.num_processes > 1:
        raise LaunchError(f"launcher={launcher.name} runs one process, but launcher.num_processes="
                          f"{launcher.num_processes}: pick a multi-process profile (launcher=ddp, zero2, zero3, fsdp2)")
    if kind == "MULTI_GPU" and launcher.num_processes < 2:
        raise LaunchError(f"launcher={launcher.name} needs launcher.num_processes >= 2")
    if launcher.num_processes % launcher.num_machines:
        raise LaunchError(f"launcher.num_processes={launcher.num_processes} is not a multiple of "
                          f"launcher.num_machines={launcher.num_machines}: every machine runs as many processes")
    if launcher.num_machines > 1 and not launcher.main_process_ip:
        raise LaunchError("launcher.num_machines > 1 needs launcher.main_process_ip: the address of machine 0")
    if not 0 <= launcher.machine_rank < launcher.num_machines:
        raise LaunchError(f"launcher.machine_rank={launcher.machine_rank} must be in 0..{launcher.num_machines - 1}")
    if kind == "FSDP" and not torch.cuda.is_available():
        raise LaunchError(f"launcher={launcher.name} (FSDP) needs GPUs and this machine has none; accelerate would "
                          "silently run it as plain data parallel. On a CPU use launcher=ddp, zero2 or zero3.")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise LaunchError(f"launcher={launcher.name} needs DeepSpeed, which is not installed: "
                          "pip install --no-build-isolation 'deepspeed>=0.19' (or `make install`, which installs it)")


def accelerate_config(launcher, mixed_precision: str = "no") -> dict[str, Any]:
    """The accelerate config file for `launcher` (what `accelerate config` would write for it)."""
    config = {
        "compute_environment": "LOCAL_MACHINE",
        **OmegaConf.to_container(OmegaConf.create(dict(launcher.accelerate)), resolve=True),
        "num_processes": launcher.num_processes,
        "num_machines": launcher.num_machines,
        "machine_rank": launcher.machine_rank,
        "main_process_port": launcher.main_process_port,
        "mixed_precision": mixed_precision,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,  # `use_cpu: true` would make accelerate start one process; ranks pick the CPU themselves
        "debug": False,
    }
    if launcher.main_process_ip:
        config["main_process_ip"] = launcher.main_process_ip
    return config


def _mixed_precision(cfg) -> str:
    if not hasattr(cfg, "optim"):
        return "no"
    from vlmtune.train.trainer import precision_flags

    bf16, fp16 = precision_flags(cfg.optim.precision)
    return "bf16" if bf16 else "fp16" if fp16 else "no"


def _needs_launch(launcher) -> bool:
    return engine(launcher) != "NO" or launcher.num_processes > 1


def launch_command(config_file: Path, script: str, overrides: list[str], run_dir: Path) -> list[str]:
    kept = [o for o in overrides if not o.lstrip("+~").startswith("run_dir=")]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), script, *kept,
            f"run_dir={run_dir}"]


def _ranks_of(process: subprocess.Popen) -> list[int]:
    """The rank processes that the launcher process started (its children), newest state."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(process.pid).children()]
    except psutil.NoSuchProcess:
        return []


def _forward_signals(process: subprocess.Popen) -> tuple[list, dict]:
    """Pass preemption signals on to the ranks as SIGTERM (they checkpoint and stop). Returns the list that the
    signals received get appended to (with the handler that was there before, to run once the ranks are done) and
    the handlers to put back afterwards."""
    received: list = []

    def handler(signum, frame):
        log.warning("signal %d: asking the ranks to write a checkpoint and stop", signum)
        for pid in _ranks_of(process) or [process.pid]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        received.append((signum, frame, previous[signum]))

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    return received, previous


class _LauncherErrors:
    """Passes the launch's stderr (the ranks' and the launcher's) through as it comes, except tracebacks, which are
    held until the launch ends: when a rank stopped on an error the user can fix (its one `error:` line went
    through), the launcher's own report of the failed ranks (torch elastic's ChildFailedError traceback) is dropped,
    since it would read as a crash; otherwise everything held is printed."""

    def __init__(self, stream) -> None:
        import threading

        self.held: list[str] = []
        self.user_error = False
        self._thread = threading.Thread(target=self._relay, args=(stream,), daemon=True)
        self._thread.start()

    def _relay(self, stream) -> None:
        for line in stream:
            self.user_error = self.user_error or line.startswith("error: ")
            if self.held or line.startswith("Traceback (most recent call last)") or " failed (exitcode: " in line:
                self.held.append(line)
            else:
                sys.stderr.write(line)

    def finish(self, failed: bool) -> None:
        self._thread.join(timeout=30)
        if not (failed and self.user_error):
            sys.stderr.writelines(self.held)
        sys.stderr.flush()


def _fill_from_slurm(launcher) -> None:
    """A multi-node SLURM job (conf/hydra/launcher/slurm.yaml, one task per node): this node's machine_rank and the
    first node's address, unless given."""
    if launcher.num_machines < 2 or "SLURM_NODEID" not in os.environ or launcher.main_process_ip:
        return
    hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]], check=True,
                           capture_output=True, text=True).stdout.split()
    launcher.machine_rank = int(os.environ["SLURM_NODEID"])
    launcher.main_process_ip = hosts[0]


def relaunch(cfg: DictConfig, script: str) -> Any:
    """Run `script` with this run's overrides under `accelerate launch` with cfg.launcher; return its result."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from vlmtune.hydra_setup import STAMP_GIVEN

    typed = OmegaConf.to_object(cfg)
    launcher = typed.launcher
    _fill_from_slurm(launcher)
    check_profile(launcher)
    run_dir = Path(typed.run_dir).resolve()
    overrides = list(HydraConfig.get().overrides.task)
    named = any(o.startswith("run_dir=") for o in overrides) or HydraConfig.get().mode == RunMode.MULTIRUN
    if launcher.num_machines > 1 and not (named or STAMP_GIVEN):
        raise LaunchError("launcher.num_machines > 1: give run_dir=<a folder every machine sees> (or set "
                          "VLMTUNE_RUN_STAMP to one value on every machine), so all machines write one run directory")
    if launcher.machine_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / (f"accelerate_config.machine{launcher.machine_rank}.yaml" if launcher.machine_rank
                             else "accelerate_config.yaml")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(accelerate_config(launcher, _mixed_precision(typed)), sort_keys=False))
    result_file = run_dir / ".launch_result.json"
    result_file.unlink(missing_ok=True)
    command = launch_command(config_file, script, overrides, run_dir)
    log.info("launcher=%s: %d processes on %d machine(s): %s", launcher.name, launcher.num_processes,
             launcher.num_machines, " ".join(command))
    env = {**os.environ, LAUNCHED: "1", RESULT_FILE: str(result_file)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    relay = _LauncherErrors(process.stderr)
    received, previous = _forward_signals(process)
    code = process.wait()
    relay.finish(failed=code != 0)
    for signum, before in previous.items():  # e.g. the next trial of a sweep in this process installs its own
        signal.signal(signum, before)
    for signum, frame, before in received:  # the ranks have checkpointed: now e.g. submitit's requeue
        if callable(before):
            before(signum, frame)
    if code != 0:
        raise SystemExit(1 if relay.user_error else code)
    return json.loads(result_file.read_text()) if result_file.exists() else None


def _script(main) -> str:
    """The recipe file to launch: where `main` was defined, or (a function submitit unpickled, whose code has no
    file) recipes/<config name>.py, the name every recipe's config shares with its file."""
    if Path(main.__code__.co_filename).is_file():
        return main.__code__.co_filename
    import importlib.util

    from hydra.core.hydra_config import HydraConfig

    return str(Path(importlib.util.find_spec("recipes").origin).parent / f"{HydraConfig.get().job.config_name}.py")


def launching(main):
    """Decorator under `@hydra.main`: with a multi-process launcher profile, re-execute the recipe under
    `accelerate launch` (from the outside) or refuse an engine that cannot run here (from the inside)."""

    @functools.wraps(main)
    def wrapper(cfg: DictConfig):
        if inside_launch():
            refuse_fsdp_without_gpu()
            result = main(cfg)
            if os.environ.get(RESULT_FILE) and int(os.environ.get("RANK", "0")) == 0:
                Path(os.environ[RESULT_FILE]).write_text(json.dumps(result))
            return result
        if _needs_launch(cfg.launcher):
            return relaunch(cfg, _script(main))
        return main(cfg)

    return wrapper
