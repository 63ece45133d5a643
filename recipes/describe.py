"""Describe the model that `sft` with the same overrides would train: parts, checkpoints, parameters per part,
image tokens per image and what is trainable. Composes the model; writes nothing.

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

    from transformers.utils import logging as hf_logging

    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.model.compose import compose, template_key
    from vlmtune.model.hf_vlm import load_hf_vlm, resolve_template
    from vlmtune.model.parts import model_type_at
    from vlmtune.runs import validated
    from vlmtune.train.policy import apply_policy, bnb_4bit_config, parameter_table

    hf_logging.disable_progress_bar()
    cfg = validated(cfg)  # the same validation as a real run
    qlora = cfg.policy.llm.mode == "qlora"
    template = "the checkpoint's"
    if cfg.init_from:
        quantization = bnb_4bit_config(cfg.peft, model_type_at(cfg.init_from)) if qlora else None
        model, _ = load_vlm(cfg.init_from, quantization_config=quantization, what="init_from")
        source = [f"checkpoint  {cfg.init_from}"]
    elif cfg.model.path:
        model, _ = load_hf_vlm(cfg.model)
        template = resolve_template(cfg.model.template, model.config)
        source = [f"vlm         {cfg.model.path}"]
    else:
        model, _ = compose(cfg.model)
        template = template_key(cfg.model)
        source = [f"vision      {cfg.model.vision.path} (feature layer {cfg.model.vision.feature_layer}, "
                  f"{cfg.model.vision.select_strategy} tokens)",
                  f"llm         {cfg.model.llm.path}",
                  f"projector   {cfg.model.projector.name}"]
    policy = cfg.policy
    if qlora and not cfg.init_from:  # sft saves the base first, then loads its LLM in 4-bit: count it as LoRA here
        source.append("(policy.llm.mode=qlora: sft loads the LLM in 4-bit; the table counts it unquantized)")
        policy = replace(policy, llm=replace(policy.llm, mode="lora"))
    model = apply_policy(model, policy, cfg.peft)
    config = model.config
    print("\n".join([
        *source,
        f"model type  {config.model_type}; {getattr(config, 'image_seq_length', 'n/a')} image tokens per image; "
        f"template {template}",
        "",
        parameter_table(model, cfg.policy, cfg.optim, cfg.peft),
    ]))


if __name__ == "__main__":
    run_command(main)
