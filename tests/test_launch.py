"""Launch profiles (conf/launcher/) as accelerate config files, refusals before any process starts, FSDP refused on a
machine without a GPU (from outside and from inside a launch), and a sweep through Hydra's submitit launcher."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, vlmtune
from hydra import compose, initialize_config_dir

from vlmtune.hydra_setup import setup
from vlmtune.launch import LaunchError, accelerate_config, check_profile

PROFILES = ["single", "ddp", "fsdp2", "zero2", "zero3", "zero3_offload"]


def _launcher(*overrides: str):
    from omegaconf import OmegaConf

    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sft", overrides=["run_dir=unused", *overrides])
    return OmegaConf.to_object(cfg).launcher


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_is_an_accelerate_config_accelerate_reads(profile, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    launcher = _launcher(f"launcher={profile}", "launcher.num_processes=8", "launcher.num_machines=2",
                         "launcher.machine_rank=1", "launcher.main_process_ip=10.0.0.1")
    assert launcher.name == profile
    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump(accelerate_config(launcher)))
    config = load_config_from_file(str(path))  # accelerate's own reader: unknown keys or bad values fail here
    expected = {"single": "NO", "ddp": "MULTI_GPU", "fsdp2": "FSDP"}.get(profile, "DEEPSPEED")
    assert config.distributed_type == expected
    assert (config.num_processes, config.num_machines, config.machine_rank) == (8, 2, 1)
    assert config.main_process_ip == "10.0.0.1" and config.main_process_port == 29500
    if profile.startswith("zero"):
        stage = config.deepspeed_config["zero_stage"]
        assert stage == (2 if profile == "zero2" else 3)
        offload = "cpu" if profile == "zero3_offload" else "none"
        assert config.deepspeed_config["offload_optimizer_device"] == offload
        assert config.deepspeed_config["offload_param_device"] == offload
    if profile == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert config.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize(("overrides", "message"), [
    (["launcher=fsdp2"], "needs GPUs and this machine has none"),
    (["launcher.num_processes=2"], "runs one process"),
    (["launcher=ddp", "launcher.num_processes=1"], "needs launcher.num_processes >= 2"),
    (["launcher=zero3", "launcher.num_processes=3", "launcher.num_machines=2",
      "launcher.main_process_ip=10.0.0.1"], "not a multiple"),
    (["launcher=zero3", "launcher.num_processes=4", "launcher.num_machines=2"], "needs launcher.main_process_ip"),
])
def test_profiles_that_cannot_run_are_refused_before_any_process_starts(overrides, message):
    with pytest.raises(LaunchError, match=message):
        check_profile(_launcher(*overrides))


def test_fsdp_is_refused_on_a_cpu_machine_not_run_as_ddp(cache, tmp_path):
    # From the outside: `vlmtune sft launcher=fsdp2` stops before starting any process.
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", "sft", "launcher=fsdp2", f"run_dir={tmp_path / 'a'}",
                           "logger=none"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "needs GPUs and this machine has none" in proc.stdout + proc.stderr
    assert not (tmp_path / "a" / "trainer").exists()
    # From the inside: the user's own FSDP accelerate config, which accelerate would run as plain DDP on a CPU.
    config = tmp_path / "fsdp.yaml"
    config.write_text(yaml.safe_dump(accelerate_config(_launcher("launcher=fsdp2"))))
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "recipes/sft.py", f"run_dir={tmp_path / 'b'}", "logger=none"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "accelerate would run it as plain data parallel" in proc.stdout + proc.stderr
    assert not (tmp_path / "b" / "trainer").exists()


def test_submitit_local_sweep_runs_each_trial_as_a_two_process_launch(pipeline, tmp_path):
    runs = tmp_path / "runs"
    init = f"init_from={pipeline['pretrain'] / 'checkpoint'}"
    output = vlmtune("sft", "-m", "hydra/launcher=submitit_local", "optim.lr=1e-3,2e-3", "launcher=ddp",
                     "launcher.num_processes=2", f"paths.runs={runs}", init,
                     "optim.max_steps=2", "optim.batch_size=2", "logger=none", "eval.batch_size=8",
                     "data.max_test_samples=4", timeout=900)
    sweeps = list(runs.glob("sft-sweep/*"))
    assert len(sweeps) == 1, output  # every job (its own process) names the same sweep directory
    sweep = sweeps[0]
    assert (sweep / ".submitit").is_dir(), "the trials ran as submitit jobs"
    for trial, lr in (("0", 1e-3), ("1", 2e-3)):
        run_dir = sweep / trial
        accelerate = yaml.safe_load((run_dir / "accelerate_config.yaml").read_text())
        assert accelerate["distributed_type"] == "MULTI_GPU" and accelerate["num_processes"] == 2
        assert (run_dir / "sft.rank1.log").exists(), "the trial ran on two processes"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == lr
        assert (run_dir / "checkpoint" / "adapter_model.safetensors").exists()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0 <= metrics["accuracy"] <= 1
        # The value the sweeper sees is the relaunched recipe's return value, handed back by rank 0.
        assert json.loads((run_dir / ".launch_result.json").read_text()) == metrics["accuracy"]


def test_slurm_launcher_sizes_each_trial_from_the_launcher_profile():
    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sft", overrides=["run_dir=unused", "hydra/launcher=slurm", "launcher=zero3",
                                        "launcher.num_processes=16", "launcher.num_machines=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 1, 8)
    assert launcher.signal_delay_s > 0 and launcher.max_num_timeout > 0


def test_slurms_warning_signal_to_vlmtune_makes_the_ranks_checkpoint_and_stop(pipeline, tmp_path):
    import threading

    from vlmtune.train.checkpoints import latest_complete_checkpoint

    run_dir = tmp_path / "preempted"
    command = [sys.executable, "-m", "vlmtune.cli", "sft", "launcher=ddp", "launcher.num_processes=2",
               f"run_dir={run_dir}", f"init_from={pipeline['pretrain'] / 'checkpoint'}", "logger=none",
               "evaluate_at_end=false", "optim.max_steps=2000", "optim.batch_size=2", "save_steps=0", "logging_steps=1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not any("'loss'" in line for line in list(lines)):  # a step has been logged: training runs
        assert time.monotonic() < deadline and process.poll() is None, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR2)  # what submitit asks SLURM to send before preemption or the time limit
    process.wait(timeout=600)
    reader.join(timeout=60)
    output = "".join(lines)
    assert process.returncode != 0, "a preempted run does not report success"
    assert "asking the ranks to write a checkpoint and stop" in output
    saved = latest_complete_checkpoint(run_dir / "trainer")
    assert saved is not None, output[-3000:]
    assert 0 < int(saved.name.removeprefix("checkpoint-")) < 2000 and not (run_dir / "checkpoint").exists()
