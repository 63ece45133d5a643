"""`make bench`: side-by-side timings on the tiny parts, reported as ratios (one run, one machine).

- training: seconds per SFTTrainer step for a full fine-tune, LoRA and QLoRA on the same batches, LoRA with
  padding-free packing, and projector-only training (stage 1) with and without the vision feature cache (timed
  after the first epoch has filled it);
- generation: seconds per answer with batch size 1 against batch size 8 (left padding).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

TRAIN_STEPS = 30
WARMUP_STEPS = 5


def _train_seconds_per_step(base: Path, records, method: str, out: Path, *, packing: bool = False,
                            feature_cache: Path | None = None, warmup: int = WARMUP_STEPS) -> float:
    from transformers import TrainerCallback

    from vlmtune.config import DataConfig, OptimConfig, PartPolicy, PeftConfig, PolicyConfig, TrainRecipeConfig
    from vlmtune.data.records import to_dataset
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.train.feature_cache import cache_vision_features
    from vlmtune.train.policy import apply_policy, bnb_4bit_config
    from vlmtune.train.sft import fit

    peft, policy = PeftConfig(), PolicyConfig(llm=PartPolicy(mode=method))
    model, processor = load_vlm(base, quantization_config=bnb_4bit_config(peft) if method == "qlora" else None)
    model = apply_policy(model, policy, peft)
    if feature_cache is not None:
        cache_vision_features(model, feature_cache)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    cfg = TrainRecipeConfig(run_dir=str(out), optim=OptimConfig(max_steps=TRAIN_STEPS, batch_size=8), policy=policy,
                            data=DataConfig(packing=packing), logging_steps=1000, resume="never")
    fit(model, processor, to_dataset(records), cfg, out / f"{method}-{packing}-{feature_cache is not None}",
        report_to="none", callbacks=[Clock()])
    timed = stamps[warmup:]
    return (timed[-1] - timed[0]) / (len(timed) - 1)


def _generate_seconds_per_answer(base: Path, records, batch_size: int) -> float:
    from vlmtune.eval.generate import generate_answers
    from vlmtune.model.checkpoint import load_vlm

    model, processor = load_vlm(base)
    generate_answers(model, processor, records[:8], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    generate_answers(model, processor, records, batch_size=batch_size, max_new_tokens=4)
    return (time.perf_counter() - start) / len(records)


def main() -> None:
    import torch

    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.data.records import read_samples
    from vlmtune.data.shapes import write_shapes_dataset
    from vlmtune.hydra_setup import cache_dir
    from vlmtune.model.checkpoint import save_checkpoint
    from vlmtune.model.compose import compose
    from vlmtune.tiny import IMAGE_SIZE, write_tiny_parts

    parts = write_tiny_parts(cache_dir() / "tiny")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = write_shapes_dataset(out / "shapes", n_train=512, n_test=64, image_size=IMAGE_SIZE)
        cfg = ModelConfig(vision=VisionConfig(path=str(parts["vision/siglip"]), select_strategy="full",
                                              feature_layer=-1), llm=LLMConfig(path=str(parts["llm/llama"])))
        base = save_checkpoint(*compose(cfg), out / "base", {"recipe": "bench"})
        train = read_samples(data["train"])
        test = read_samples(data["test"])
        steps = {m: _train_seconds_per_step(base, train, m, out) for m in ["full", "lora", "qlora"]}
        steps["lora + packing"] = _train_seconds_per_step(base, train, "lora", out, packing=True)
        # Projector only (stage 1) on 64 samples = 8 steps per epoch: timed from the second epoch on.
        stage1 = {"projector only": _train_seconds_per_step(base, train[:64], "frozen", out, warmup=8),
                  "projector only + feature cache": _train_seconds_per_step(
                      base, train[:64], "frozen", out, feature_cache=out / "features", warmup=8)}
        answers = {bs: _generate_seconds_per_answer(base, test, bs) for bs in [1, 8]}

    print(f"\nvlmtune bench on tiny parts, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| training (batch 8) | ms / step | vs full fine-tune |\n|---|---|---|")
    for method, seconds in steps.items():
        print(f"| {method} | {seconds * 1e3:.1f} | {seconds / steps['full']:.2f}x |")
    print("\n| stage 1 (batch 8, epochs 2+) | ms / step | vs no cache |\n|---|---|---|")
    for name, seconds in stage1.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / stage1['projector only']:.2f}x |")
    print("\n| generation | ms / answer | vs batch 1 |\n|---|---|---|")
    for bs, seconds in answers.items():
        print(f"| batch {bs} | {seconds * 1e3:.1f} | {seconds / answers[1]:.2f}x |")


if __name__ == "__main__":
    main()
