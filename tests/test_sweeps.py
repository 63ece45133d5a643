"""An Optuna sweep (conf/experiment/tiny_lr_sweep.yaml) over `sft`'s returned accuracy, on tiny parts."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import vlmtune
from wandb_records import run_record


def test_optuna_sweep_maximises_accuracy_each_trial_in_its_own_directory_and_wandb_group(cache, tmp_path):
    runs = tmp_path / "runs"
    vlmtune("sft", "-m", "+experiment=tiny_lr_sweep", f"paths.runs={runs}", "optim.max_steps=3",
            "optim.batch_size=4", "eval.batch_size=8", "data.max_test_samples=6")
    sweeps = list(runs.glob("sft-sweep/*"))
    assert len(sweeps) == 1
    sweep = sweeps[0]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1", "2"]  # hydra.sweeper.n_trials=3

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and set(results["best_params"]) == {"optim.lr", "peft.r"}
    accuracy, params = {}, {}
    for trial in trials:
        accuracy[trial.name] = json.loads((trial / "metrics.json").read_text())["accuracy"]
        config = yaml.safe_load((trial / "config.yaml").read_text())
        params[trial.name] = {"optim.lr": config["optim"]["lr"], "peft.r": config["peft"]["r"]}
        assert 1e-4 <= config["optim"]["lr"] <= 3e-3 and config["peft"]["r"] in (4, 8)
        assert (trial / "checkpoint" / "adapter_config.json").exists()
    assert len({p["optim.lr"] for p in params.values()}) == 3, "each trial samples its own learning rate"
    assert results["best_value"] == pytest.approx(max(accuracy.values()))
    best = [name for name in accuracy if accuracy[name] == max(accuracy.values())]
    assert any(params[name]["optim.lr"] == pytest.approx(results["best_params"]["optim.lr"]) for name in best)

    records = [run_record(trial) for trial in trials]
    assert {r["run_group"] for r in records} == {sweep.name}, "one W&B group per sweep"
    assert all(f"sweep:{sweep.name}" in r["tags"] for r in records)
    assert len({r["display_name"] for r in records}) == 3
