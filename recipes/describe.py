"""Describe the model that `sft` with the same overrides would train: parts, checkpoints, parameters per part,
image tokens per image and what is trainable. Composes the model; writes nothing. Parts named by hub id are built
on the meta device from their published architecture (vlmtune/model/meta.py): real sizes, offline, no weights.

Run as `vlmtune describe [overrides]`, e.g. `vlmtune describe model/vision=tiny_clip peft=qlora`.
"""

import hydra
from omegaconf import DictConfig

from vlmtune.errors import run_command
from vlmtune.hydra_setup import setup

setup()


@hydra.main(config_path="../conf", config_name="describe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from dataclasses import replace
    from types import SimpleNamespace

    from transformers.utils import logging as hf_logging

    from vlmtune.memory import check_fits, estimate, pixel_shape
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.model.compose import compose, template_key
    from vlmtune.model.hf_vlm import load_hf_vlm, resolve_template
    from vlmtune.model.meta import image_processor_at, image_tokens, meta_model, needs_meta
    from vlmtune.model.parts import model_type_at
    from vlmtune.runs import validated
    from vlmtune.train.policy import apply_policy, bnb_4bit_config, parameter_table

    hf_logging.disable_progress_bar()
    cfg = validated(cfg)  # the same validation as a real run
    qlora = cfg.policy.llm.mode == "qlora"
    template = "the checkpoint's"
    if cfg.init_from:
        quantization = bnb_4bit_config(cfg.peft, model_type_at(cfg.init_from)) if qlora else None
        model, processor = load_vlm(cfg.init_from, quantization_config=quantization, what="init_from")
        source = [f"checkpoint  {cfg.init_from}"]
    elif needs_meta(cfg.model):  # a hub id: its architecture on the meta device
        model, where = meta_model(cfg.model)
        processor = SimpleNamespace(image_processor=image_processor_at(where[0]))
        template = resolve_template(cfg.model.template, model.config) if cfg.model.path else template_key(cfg.model)
        source = [f"meta device: architecture of {cfg.model.path or cfg.model.vision.path + ' + ' + cfg.model.llm.path}"
                  " (no weights read)", *(f"            {w}" for w in where)]
        if not cfg.model.path:
            source.append("(the tokenizer is not read: one embedding row per token vlmtune adds is not counted)")
    elif cfg.model.path:
        model, processor = load_hf_vlm(cfg.model)
        template = resolve_template(cfg.model.template, model.config)
        source = [f"vlm         {cfg.model.path}"]
    else:
        model, processor = compose(cfg.model)
        template = template_key(cfg.model)
        source = [f"vision      {cfg.model.vision.path} (feature layer {cfg.model.vision.feature_layer}, "
                  f"{cfg.model.vision.select_strategy} tokens)",
                  f"llm         {cfg.model.llm.path}",
                  f"projector   {cfg.model.projector.name}"]
    total = sum(param.numel() for param in model.parameters())  # before LoRA adds its own
    policy = cfg.policy
    if qlora and not cfg.init_from:  # sft saves the base first, then loads its LLM in 4-bit: count it as LoRA here
        source.append("(policy.llm.mode=qlora: sft loads the LLM in 4-bit; the table counts it unquantized)")
        policy = replace(policy, llm=replace(policy.llm, mode="lora"))
    model = apply_policy(model, policy, cfg.peft)
    config = model.config
    print("\n".join([
        *source,
        f"model type  {config.model_type}; {image_tokens(config)} image tokens per image; template {template}",
        f"size        {total:,} parameters ({total / 1e9:.2f} B)",
        "",
        parameter_table(model, cfg.policy, cfg.optim, cfg.peft),
    ]))
    # What sft would need per device for this batch, length and launcher profile (vlmtune.memory).
    length = cfg.data.max_length or 2048
    pixels = pixel_shape(processor.image_processor) if processor.image_processor is not None else None
    memory = estimate(model, cfg, length=length, pixel_shape=pixels)
    capacity = int(cfg.launcher.device_memory_gb * 2**30) if cfg.launcher.device_memory_gb else None
    print(f"\nlauncher={cfg.launcher.name}, batch {cfg.optim.batch_size} x {length} tokens"
          f"{'' if cfg.data.max_length else ' (data.max_length unset: 2048 assumed)'}; "
          f"{'4-bit LLM weights counted unquantized; ' if qlora else ''}"
          f"{'' if capacity else 'launcher.device_memory_gb=<GiB> checks the fit'}\n{memory.table(capacity)}")
    if capacity:
        check_fits(memory, cfg, capacity)
        print("fits")


if __name__ == "__main__":
    run_command(main)
