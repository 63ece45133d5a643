"""The plain path the benchmarks compare against: TRL + transformers, written as their documentation shows a user.

`LlavaForConditionalGeneration` loaded from the checkpoint, the LLaVA JSON turned into TRL's `messages` + `images`
columns, TRL's own vision collator (SFTTrainer picks it for a processor) with `assistant_only_loss`, and the same
trainable parts as vlmtune's policy: LoRA r=16, alpha=32 on the LLM's projections with the projector trained fully
(`peft_config`), the same in 4-bit nf4 for QLoRA (bitsandbytes, vision tower, projector and head kept in full
precision, as vlmtune keeps them), or everything but the vision tower for a full fine-tune. Settings changed from
SFTConfig's defaults: the run's (batch size, epochs, learning rate), bf16 only on a GPU (on a CPU bf16 is 2.5-4x
slower, FACTS.md) and gradient checkpointing only where vlmtune's run uses it too.
"""

from __future__ import annotations

import json
from pathlib import Path

LORA_TARGET = r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def llava_to_trl(record: dict, root: Path) -> dict:
    """One LLaVA record -> TRL's conversational vision format (the image as an image part of its turn)."""
    roles = {"human": "user", "gpt": "assistant"}
    messages = []
    for turn in record["conversations"]:
        before, image, after = turn["value"].partition("<image>")
        content = [{"type": "image"}, {"type": "text", "text": after}] if image else [{"type": "text", "text": before}]
        messages.append({"role": roles[turn["from"]], "content": content})
    return {"messages": messages, "images": [str(root / record["image"])]}


def _model(base: Path, method: str, bf16: bool):
    import torch
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    if method != "qlora":
        return LlavaForConditionalGeneration.from_pretrained(base)
    dtype = torch.bfloat16 if bf16 else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"])
    return LlavaForConditionalGeneration.from_pretrained(base, quantization_config=quantization, dtype=dtype)


def trainer(base: Path, data: Path, out: Path, *, batch_size: int, epochs: float, lr: float, method: str = "lora",
            bf16: bool = False, gradient_checkpointing: bool = False, callbacks=()):
    """The TRL SFTTrainer of the plain path, ready to `train()`."""
    import torch
    from datasets import Dataset, Image, List
    from peft import LoraConfig
    from transformers import AutoProcessor
    from trl import SFTConfig, SFTTrainer

    model = _model(base, method, bf16)
    processor = AutoProcessor.from_pretrained(base)
    rows = [llava_to_trl(r, data.parent) for r in json.loads(data.read_text())]
    dataset = Dataset.from_list(rows).cast_column("images", List(Image()))
    peft_config = None
    if method in ("lora", "qlora"):
        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGET,
                                 modules_to_save=["multi_modal_projector"])
    else:  # a full fine-tune of projector and LLM: the vision tower stays frozen, as in vlmtune's policy
        model.model.vision_tower.requires_grad_(False)
    args = SFTConfig(
        output_dir=str(out), per_device_train_batch_size=batch_size, num_train_epochs=epochs, learning_rate=lr,
        assistant_only_loss=True, max_length=None, use_cpu=not torch.cuda.is_available(), bf16=bf16,
        gradient_checkpointing=gradient_checkpointing, report_to="none", logging_steps=1_000_000,
        save_strategy="no", seed=0, data_seed=0, disable_tqdm=True)
    sft = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                     peft_config=peft_config, callbacks=list(callbacks))
    if method == "qlora" and not bf16:
        # TRL casts a quantized model's trainable weights to bf16; in fp32 (a CPU) the projector would then get
        # float32 features and fail. What a user has to do there (vlmtune does the same).
        for param in sft.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    return sft
