"""One measured training run, alone in its process so that its peak memory is its own.

`python -m vlmtune.bench.run <workdir> <name> <result.json> [overrides...]` trains the workload in `workdir` with the
TRL baseline (name `trl`) or with vlmtune's `sft` path (any other name, `overrides` as on the command line, e.g.
`data.packing=true`) and writes what it measured: seconds in the training loop (first step to last, model loading
and data preparation excluded for both), samples and supervised tokens trained, token slots and real tokens of
the batches (so padding), peak resident memory, and the last logged loss.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

COUNTS = ("slots", "tokens", "squared_lengths", "supervised", "samples")


def batch_counter(model, counts: dict[str, int]):
    """Count, at every forward with labels (training steps), the batch's token slots, real and supervised tokens."""

    def count(module, args, kwargs):
        labels = kwargs.get("labels")
        if labels is None or not module.training:
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if mask is not None:
            lengths = mask.sum(dim=1)
        else:  # a packed row: its samples start where the positions restart
            starts = (kwargs["position_ids"].view(-1) == 0).nonzero().flatten().tolist() + [ids.numel()]
            lengths = torch.tensor([b - a for a, b in zip(starts, starts[1:], strict=False)])
        counts["slots"] += ids.numel()
        counts["tokens"] += int(lengths.sum())
        counts["squared_lengths"] += int((lengths.long() ** 2).sum())  # attention's work grows with length squared
        counts["supervised"] += int((labels != -100).sum())
        counts["samples"] += len(lengths)

    return model.register_forward_pre_hook(count, with_kwargs=True)


def clock():
    """A callback that stamps the start and end of the training loop, in wall-clock and in this process's CPU time
    (all its threads: the work done, which other processes' load stretches less than the wall clock)."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        start = end = cpu_start = cpu_end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

        def measured(self) -> dict[str, float]:
            return {"seconds": self.end - self.start, "cpu_seconds": self.cpu_end - self.cpu_start}

    return Clock()


def train_config(workdir: Path, overrides: list[str]):
    """The sft config of the benchmark (what `vlmtune sft` would resolve) with `overrides` applied."""
    from omegaconf import OmegaConf

    from vlmtune.config import TrainRecipeConfig

    settings = json.loads((workdir / "settings.json").read_text())
    base = OmegaConf.structured(TrainRecipeConfig(run_dir=str(workdir / "runs")))
    common = [f"init_from={workdir / 'base'}", f"data.train={workdir / 'data' / 'train.json'}",
              f"optim.batch_size={settings['batch_size']}",
              f"optim.epochs={settings['epochs']}", f"optim.lr={settings['lr']}", "logging_steps=1000000",
              "resume=never", "seed=0", f"policy.llm.mode={settings.get('method', 'lora')}",
              f"policy.llm.gradient_checkpointing={settings.get('gradient_checkpointing', False)}"]
    if settings.get("bf16"):
        common += ["optim.precision=bf16", "peft.compute_dtype=bfloat16"]
    else:
        common += ["optim.precision=fp32"]
    return OmegaConf.merge(base, OmegaConf.from_dotlist(common + overrides)), settings


def run_vlmtune(workdir: Path, out: Path, overrides: list[str]) -> dict:
    """vlmtune's `sft`, as recipes/sft.py runs it from a checkpoint."""
    from vlmtune.data.training import training_data
    from vlmtune.model.base import load_for_training
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.policy import apply_policy, quantization_for
    from vlmtune.train.sft import fit

    cfg, _ = train_config(workdir, overrides)
    base = str(workdir / "base")
    model, processor = load_for_training(base, cfg, quantization_for(cfg, base))
    model = apply_policy(model, cfg.policy, cfg.peft)
    if cfg.vision_feature_cache:
        cache_vision_features(model, out / cfg.vision_feature_cache)  # inside this run's folder
    train = training_data(cfg.data, processor, out)
    counts, timer = dict.fromkeys(COUNTS, 0), clock()
    batch_counter(model, counts)
    history = fit(model, processor, train.dataset, cfg, out / "trainer", report_to="none", callbacks=[timer])
    return {**counts, **timer.measured(), "loss": history[-1].get("train_loss")}


def run_trl(workdir: Path, out: Path) -> dict:
    from vlmtune.bench.baseline import trainer

    settings = json.loads((workdir / "settings.json").read_text())
    counts, timer = dict.fromkeys(COUNTS, 0), clock()
    sft = trainer(workdir / "base", workdir / "data" / "train.json", out, batch_size=settings["batch_size"],
                  epochs=settings["epochs"], lr=settings["lr"], method=settings.get("method", "lora"),
                  bf16=settings.get("bf16", False), gradient_checkpointing=settings.get("gradient_checkpointing",
                                                                                      False), callbacks=[timer])
    batch_counter(sft.model, counts)
    sft.train()
    return {**counts, **timer.measured(), "loss": sft.state.log_history[-1].get("train_loss")}


def main(argv: list[str]) -> None:
    import tempfile

    workdir, name, result, overrides = Path(argv[0]), argv[1], Path(argv[2]), argv[3:]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        measured = run_trl(workdir, Path(tmp)) if name == "trl" else run_vlmtune(workdir, Path(tmp), overrides)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # Dataloader workers are children: their peak counts too (an upper bound: pages they share are counted twice).
    measured["peak_rss_mb"] = (own.ru_maxrss + children.ru_maxrss) / 1024
    measured["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    measured["threads"] = torch.get_num_threads()
    result.write_text(json.dumps(measured))


if __name__ == "__main__":
    main(sys.argv[1:])
