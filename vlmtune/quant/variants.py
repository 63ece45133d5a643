"""Quantized variants of a checkpoint, one exact key each (`quantize variants=[...]`), and how each is saved/loaded.

Only the LLM is quantized (vision tower, projector and lm_head stay in full precision, by the architecture's module
paths in vlmtune.model.parts), whatever the backend:

- bitsandbytes (a core dependency): `int8` (LLM.int8), `nf4`, `fp4` (4-bit, double quant), saved and reloaded by
  transformers (`config.json` keeps the quantization config).
- torchao (extra `torchao`): `torchao_int8` (int8 weight-only), `torchao_int8_dynamic` (int8 weights and dynamic
  per-token int8 activations), `torchao_int4` (int4 weight-only, group 32; needs a kernel for the device: on CPU
  torchao 0.18 asks for `mslk`). Saved as safetensors through transformers' TorchAoConfig, reloaded by
  `from_pretrained`.
- optimum-quanto (extra `quanto`): `quanto_int8`, `quanto_int4` (weights only). transformers cannot save a quanto
  model, so the variant is saved with quanto's own serialization (safetensors state dict + `quanto_qmap.json`) and
  reloaded with `optimum.quanto.requantize` (`vlmtune.quant.saved.load_quanto`; `load_vlm` does it for such a folder).
- auto-round (extra `autoround`): `awq_int4`: AWQ scales (activation-aware, calibrated on images + prompts from the
  training set through the checkpoint's own processor and chat template), then 4-bit round-to-nearest weights in
  groups of 32, saved in auto-round's format and reloaded by `from_pretrained` (transformers' AutoRoundConfig).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmtune.errors import require
from vlmtune.model.parts import parts_of, skip_modules
from vlmtune.quant.saved import QUANTO_MAP
from vlmtune.registry import Registry


@dataclass
class Job:
    """What a variant is built from and where it goes."""

    source: Path  # a full-precision checkpoint directory
    model_type: str  # its config.model_type: which modules are the LLM
    out_dir: Path  # where the variant is saved
    group_size: int = 128  # int4 weights: values per scale (torchao_int4, awq_int4)
    calibration: list[dict[str, Any]] | None = None  # training samples for calibrated variants (awq_int4)


@dataclass(frozen=True)
class Variant:
    backend: str  # the library that quantizes: bitsandbytes | torchao | quanto | autoround
    module: str  # its import name, checked before use
    extra: str | None  # the vlmtune extra that installs it; None = a core dependency
    build: Callable[[Job], Any]  # the quantized model in memory; with saves_itself, the directory it wrote
    saves_itself: bool = False  # writes its checkpoint while quantizing (auto-round)
    calibrated: bool = False  # needs job.calibration


VARIANTS: Registry[Variant] = Registry("quantize.variants")


def _from_pretrained(source: Path, quantization_config) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32,
                                                       quantization_config=quantization_config)


def _bnb(bits: int, quant_type: str = "nf4"):
    def build(job: Job) -> Any:
        from vlmtune.quantize import bnb_config

        return _from_pretrained(job.source, bnb_config(bits, quant_type, model_type=job.model_type))

    return build


VARIANTS.add("int8", Variant("bitsandbytes", "bitsandbytes", None, _bnb(8)))
VARIANTS.add("nf4", Variant("bitsandbytes", "bitsandbytes", None, _bnb(4, "nf4")))
VARIANTS.add("fp4", Variant("bitsandbytes", "bitsandbytes", None, _bnb(4, "fp4")))


def _torchao(kind: str):
    def build(job: Job) -> Any:
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
        )
        from transformers import TorchAoConfig

        config = {"int8": Int8WeightOnlyConfig, "int8_dynamic": Int8DynamicActivationInt8WeightConfig,
                  "int4": lambda: Int4WeightOnlyConfig(group_size=job.group_size)}[kind]()
        if kind == "int4":  # its kernels exist for some devices only: fail with torchao's reason, not a load report
            from torchao.quantization import quantize_

            device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                quantize_(torch.nn.Linear(2 * job.group_size, 8, device=device), config)
            except Exception as err:
                raise RuntimeError(f"torchao int4 weight-only cannot run on {device} here ({err})") from err
        return _from_pretrained(job.source, TorchAoConfig(config, modules_to_not_convert=skip_modules(job.model_type)))

    return build


VARIANTS.add("torchao_int8", Variant("torchao", "torchao", "torchao", _torchao("int8")))
VARIANTS.add("torchao_int8_dynamic", Variant("torchao", "torchao", "torchao", _torchao("int8_dynamic")))
VARIANTS.add("torchao_int4", Variant("torchao", "torchao", "torchao", _torchao("int4")))


def _quanto(weights: str):
    def build(job: Job) -> Any:
        from optimum.quanto import freeze, qint4, qint8, quantize

        model = _from_pretrained(job.source, None)
        llm = model.get_submodule(parts_of(job.model_type)["llm"])
        quantize(llm, weights={"int8": qint8, "int4": qint4}[weights])
        freeze(model)
        return model

    return build


VARIANTS.add("quanto_int8", Variant("quanto", "optimum.quanto", "quanto", _quanto("int8")))
VARIANTS.add("quanto_int4", Variant("quanto", "optimum.quanto", "quanto", _quanto("int4")))


def calibration_batches(processor, samples: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    """Training samples (images + conversation) as the model sees them: its chat template, its processor; each padded
    to the longest (attention mask 0 on the padding), since auto-round stacks the cached block inputs of all samples."""
    from vlmtune.data.images import load_image

    inputs = []
    for sample in samples:
        text = processor.apply_chat_template(sample["messages"], tokenize=False)
        images = [load_image(image, f"calibration sample {sample['id']!r}") for image in sample["images"]]
        inputs.append((text, images or None))

    def encode(text: str, images, **padding) -> dict[str, torch.Tensor]:
        return dict(processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False, **padding))

    # One slot past the longest: every sample then carries padding, so the LLM receives an attention mask for each
    # (an unpadded one gets none, and auto-round's per-sample cache of masks would come up short).
    length = max(encode(text, images)["input_ids"].shape[1] for text, images in inputs) + 1
    return [encode(text, images, padding="max_length", max_length=length) for text, images in inputs]


def _awq_int4(job: Job) -> Path:
    """auto-round's AWQ, calibrated on `calibration` (images + prompts), then int4 round-to-nearest weights."""
    import shutil
    import tempfile

    from auto_round import AutoRound
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(job.source)
    batches = calibration_batches(processor, job.calibration)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=job.out_dir.parent) as tmp:
        tuner = AutoRound(str(job.source), scheme="W4A16", group_size=job.group_size, iters=0, alg_configs="awq",
                          dataset=DataLoader(batches, batch_size=None), nsamples=len(batches),
                          seqlen=max(b["input_ids"].shape[1] for b in batches), processor=processor,
                          device_map=device, enable_torch_compile=False)
        tuner.quantize_and_save(output_dir=tmp, format="auto_round")
        written = next(p.parent for p in Path(tmp).rglob("config.json"))
        config = json.loads((written / "config.json").read_text())
        # auto-round 0.16 names the blocks in the transformers-4 layout (language_model.model.layers); transformers
        # 5 renames the weights on load but finds the blocks to replace by this name: use the loaded layout's.
        config["quantization_config"]["block_name_to_quantize"] = f"{parts_of(job.model_type)['llm']}.layers"
        (written / "config.json").write_text(json.dumps(config, indent=2))
        if job.out_dir.exists():
            shutil.rmtree(job.out_dir)
        shutil.move(str(written), job.out_dir)
    return job.out_dir


VARIANTS.add("awq_int4", Variant("autoround", "auto_round", "autoround", _awq_int4, saves_itself=True,
                                  calibrated=True))


def require_variant(name: str) -> Variant:
    """The variant called `name`; an unknown name lists the valid ones, a missing backend names its extra."""
    variant = VARIANTS.get(name)
    if variant.extra is not None:
        require(variant.module, variant.extra, f"quantize variant {name!r} ({variant.backend})")
    return variant


def save_quanto(model, processor, out_dir: Path, provenance: dict[str, Any]) -> Path:
    """quanto's serialization: the quantized state dict as safetensors, its quantization map, config, processor."""
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    from vlmtune.model.checkpoint import write_atomically, write_card_and_provenance

    def write(tmp: Path) -> None:
        state, seen = {}, set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # a tied weight (lm_head = embeddings): tie_weights() restores it
                continue
            seen.add(tensor.data_ptr())
            state[name] = tensor.contiguous()
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "quantizer": "optimum-quanto"})
        (tmp / QUANTO_MAP).write_text(json.dumps(quantization_map(model), indent=1))
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_card_and_provenance(model, tmp, provenance)

    return write_atomically(out_dir, write)
