"""Where a recipe's model comes from: one place that puts the starting checkpoint on disk and loads it.

A training run starts from a full checkpoint on disk, because a new LoRA adapter records its base by path and
bitsandbytes quantizes at load time:
- `init_from=<checkpoint>`: used as it is; an adapter directory is first merged into `<run_dir>/base`;
- `model.path=<dir or hub id>` (an existing HF VLM): used as it is, its chat template replaced on load;
- otherwise the parts of `model.*` are composed and saved as `<run_dir>/base`.
The main process writes `<run_dir>/base` atomically, once (a resumed run keeps it); the others wait for it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlmtune.model.checkpoint import is_adapter, load_vlm, save_checkpoint
from vlmtune.processes import is_main_process

log = logging.getLogger("vlmtune")

BASE = "base"  # the run directory's folder for a merged or composed starting checkpoint


def full_checkpoint(run, source: str | Path, what: str = "checkpoint") -> Path:
    """`source` as a full checkpoint directory: an adapter is merged into `<run_dir>/base` (once)."""
    source = Path(source).resolve()
    if not is_adapter(source):
        return source
    return _write_base(run, lambda: load_vlm(source, what=what), stage=f"merged {what}")


def training_base(run, cfg) -> str:
    """The starting checkpoint of a training run (`cfg`: a TrainRecipeConfig) on disk; see the module docstring."""
    from vlmtune.model.hf_vlm import model_path

    if cfg.init_from is not None:
        return str(full_checkpoint(run, cfg.init_from, what="init_from"))
    if cfg.model.path is not None:
        return model_path(cfg.model.path)
    from vlmtune.model.compose import compose

    return str(_write_base(run, lambda: compose(cfg.model), stage="composed base"))


def load_for_training(base: str, cfg, quantization=None):
    """(model, processor) of the starting checkpoint `base`, quantized per `quantization` (QLoRA); an existing HF VLM
    (`model.path`) gets the chat template `model.template` with its generation marks."""
    from vlmtune.model.hf_vlm import prepare_for_training

    existing_vlm = cfg.init_from is None and cfg.model.path is not None
    what = "init_from" if cfg.init_from is not None else "model.path" if existing_vlm else "composed base"
    model, processor = load_vlm(base, dtype=getattr(torch, cfg.model.dtype), quantization_config=quantization,
                                what=what)
    if quantization is not None:
        from bitsandbytes.nn import Linear4bit, Linear8bitLt

        quantized = sum(isinstance(module, (Linear4bit, Linear8bitLt)) for module in model.modules())
        bits = 4 if quantization.load_in_4bit else 8
        log.info("%s: linear layers in %d-bit: %d (bitsandbytes; %s kept in full precision)", base, bits, quantized,
                 ", ".join(quantization.llm_int8_skip_modules or []))
    if existing_vlm:
        key = prepare_for_training(model, processor, cfg.model.template)
        log.info("%s (%s): chat template %s", cfg.model.path, model.config.model_type, key)
    return model, processor


def _write_base(run, build, stage: str) -> Path:
    base = run.dir / BASE
    if is_main_process() and not (base / "config.json").exists():  # a resumed run keeps its base
        save_checkpoint(*build(), base, run.provenance(stage=stage))
    run.wait_for_everyone()
    return base
