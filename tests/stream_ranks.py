"""Run by tests/test_streaming.py under `accelerate launch` with several gloo processes: build the sft trainer on a
stream (packed batches), record which samples each process's first batches hold (read back from the supervised
tokens: exactly what trains), then train. Writes <out>/rank<N>.json."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

from vlmtune.config import DataConfig, LLMConfig, ModelConfig, OptimConfig, TrainRecipeConfig, VisionConfig
from vlmtune.data.errors import DataReport
from vlmtune.data.streaming import training_stream
from vlmtune.model.compose import compose
from vlmtune.train.policy import apply_policy
from vlmtune.train.sft import sft_trainer


def main(tiny: Path, data: Path, out: Path, steps: int) -> None:
    cfg = TrainRecipeConfig(
        run_dir=str(out), logging_steps=1,
        model=ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full"),
                          llm=LLMConfig(path=str(tiny / "llm" / "llama"))),
        data=DataConfig(train=str(data), streaming=True, packing=True),  # packed: one row per batch
        optim=OptimConfig(max_steps=steps, batch_size=4, warmup_ratio=0.0))
    model, processor = compose(cfg.model)
    model = apply_policy(model, cfg.policy, cfg.peft)
    report = DataReport()
    trainer = sft_trainer(model, processor, training_stream(cfg.data, processor, report), cfg, out / "trainer",
                          report_to="none")
    ids = []
    for batch in itertools.islice(trainer.get_train_dataloader(), steps):
        for row, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            ids.extend(re.findall(r"answer\d+", processor.tokenizer.decode(row[labels != -100])))
    trainer.train()
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(json.dumps({
        "ids": ids, "steps": trainer.state.global_step, "processes": trainer.accelerator.num_processes}))
    # Close the process group as vlmtune's Run.finish does: gloo threads left at interpreter exit can hang a rank.
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
