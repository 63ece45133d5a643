"""Memory per device before the first step: weights, gradients, optimizer states and activations for the chosen
policy x launcher profile x batch x length, and a refusal, naming what to change, when a run cannot fit.

Weights, gradients and AdamW states are counted from the model's own tensors (trainable ones for gradients and
states), divided over the processes the way the engine shards them: ZeRO-2 shards gradients and optimizer states,
ZeRO-3 and FSDP also the weights, and zero3_offload keeps optimizer states and weights in host memory.

Activations are not guessed from a formula: a twin of the model (same config, same policy, LoRA included) runs one
forward pass on the meta device with a batch of the real shape, and every tensor autograd keeps for the backward
pass is counted (shapes and dtypes only: no memory, no compute). Attention is counted as a fused kernel keeps it
(output and log-sum-exp, never the L x L matrix). Each transformer block's share is noted too, so the same pass gives
the figure with gradient checkpointing: each checkpointed block keeps only its input, and one block at a time is
recomputed in the backward pass. The logits' gradient (batch x length x vocabulary floats) is added as the largest
transient. Summing everything is an upper bound: gradients grow while activations are freed.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, replace

import torch

from vlmtune.errors import ConfigError

log = logging.getLogger("vlmtune")

GIB = 2**30
ENGINES = {"NO": 0, "MULTI_GPU": 0, "FSDP": 3, "DEEPSPEED": None}  # ZeRO stage each engine amounts to


@dataclass
class MemoryEstimate:
    """Bytes per device (GPU, or a process's share of host memory on a CPU machine)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int | None  # with this run's checkpointing; None when the model type cannot be measured
    activations_other: int | None  # with the other checkpointing setting (all blocks of trained parts, or none)
    logits_gradient: int | None
    host: int  # offloaded to host memory (zero3_offload)
    checkpointing: bool  # whether this run checkpoints any part
    processes: int
    stage: int  # 0 (one process / DDP), 2 (ZeRO-2), 3 (ZeRO-3, FSDP)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0) + (self.logits_gradient or 0)

    def table(self, capacity: int | None = None) -> str:
        other = "without" if self.checkpointing else "with"
        rows = [("weights", self.weights), ("gradients", self.gradients), ("optimizer states", self.optimizer),
                (f"activations ({'with' if self.checkpointing else 'no'} checkpointing)", self.activations),
                ("logits gradient", self.logits_gradient), ("total (upper bound)", self.total)]
        lines = [f"memory per device, {self.processes} process(es), ZeRO stage {self.stage}:"]
        lines += [f"  {name:<38} {'n/a' if value is None else f'{value / GIB:9.3f} GiB'}" for name, value in rows]
        if self.activations_other is not None:
            lines.append(f"  {f'(activations {other} checkpointing)':<38} {self.activations_other / GIB:9.3f} GiB")
        if self.host:
            lines.append(f"  {'host memory (offloaded)':<38} {self.host / GIB:9.3f} GiB")
        if capacity:
            lines.append(f"  {'device memory':<38} {capacity / GIB:9.3f} GiB")
        return "\n".join(lines)


def _stage(launcher) -> int:
    engine = str(launcher.accelerate.get("distributed_type", "NO")).upper()
    if engine == "DEEPSPEED":
        return int(launcher.accelerate.get("deepspeed_config", {}).get("zero_stage", 2))
    return ENGINES.get(engine, 0)


def _offload(launcher) -> tuple[bool, bool]:
    ds = launcher.accelerate.get("deepspeed_config", {}) or {}
    fsdp = launcher.accelerate.get("fsdp_config", {}) or {}
    params = ds.get("offload_param_device", "none") not in (None, "none") or bool(fsdp.get("fsdp_offload_params"))
    return ds.get("offload_optimizer_device", "none") not in (None, "none") or params, params


def state_bytes(model, launcher, deepspeed: bool) -> dict[str, int]:
    """Weights, gradients and AdamW states per device (and in host memory) for `model` under `launcher`."""
    weights = trainable = trainable_numel = 0
    for param in model.parameters():
        size = param.numel() * param.element_size()
        weights += size
        if param.requires_grad:
            trainable += size
            trainable_numel += param.numel()
    optimizer = 2 * trainable  # AdamW: two moments in the weights' dtype
    if deepspeed and trainable and trainable_numel * 4 != trainable:  # DeepSpeed's fp32 master weights and moments
        optimizer = trainable_numel * 12
    processes, stage = launcher.num_processes, _stage(launcher)
    offload_optimizer, offload_params = _offload(launcher)
    gradients = trainable // processes if stage >= 2 else trainable
    optimizer = optimizer // processes if stage >= 1 else optimizer
    weights = weights // processes if stage >= 3 else weights
    host = 0
    if offload_optimizer:
        host, optimizer = host + optimizer, 0
    if offload_params:
        host, weights = host + weights, 0
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "host": host}


def _blocks(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def _fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
    """SDPA as fused kernels keep it for the backward pass (on the meta device SDPA would take the math path,
    which keeps the L x L attention matrix no GPU kernel keeps)."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal and attn_mask is None, attn_mask=attn_mask, scale=scale)[0]


def _llava_loss(model, batch: int, length: int, pixel_shape: tuple[int, ...]):
    """One training forward pass of a Llava-family model on meta inputs: image features written over the first
    image-token positions of each sample (the merge itself checks data, which the meta device has none of)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    core, dtype = base.model, next(base.parameters()).dtype
    tokens = base.config.image_seq_length
    pixels = torch.zeros(batch, *pixel_shape[-3:], device="meta", dtype=dtype)
    features = core.get_image_features(pixel_values=pixels)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, list | tuple):
        features = torch.cat(list(features))
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    embeds = core.get_input_embeddings()(ids)
    embeds = torch.cat([features.reshape(batch, tokens, -1).to(embeds.dtype), embeds[:, tokens:]], dim=1)
    hidden = core.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    logits = base.lm_head(hidden)
    return base.loss_function(logits=logits, labels=ids, vocab_size=logits.shape[-1]), logits


def activation_bytes(model, batch: int, length: int, pixel_shape: tuple[int, ...],
                     checkpointed: list[str]) -> tuple[int, int, int]:
    """(activations with checkpointing of the blocks under the module paths `checkpointed`, without, logits bytes)
    for a meta-device `model` (vlmtune.memory.meta_twin)."""
    blocks = _blocks(model)
    names = {id(block): name for name, block in model.named_modules() if id(block) in {id(b) for b in blocks}}
    current: list[int] = []
    kept: dict[object, tuple[int, int]] = {}  # storage -> (bytes, block id or 0)
    inputs: dict[int, int] = {}  # block id -> bytes of its input hidden states

    def pack(tensor):
        storage = tensor.untyped_storage()
        owner = current[-1] if current else 0
        previous = kept.get(storage._cdata, (0, owner))
        kept[storage._cdata] = (max(previous[0], storage.nbytes()), previous[1])
        return tensor

    def enter(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor):
            inputs[id(module)] = hidden.numel() * hidden.element_size()
        current.append(id(module))

    def leave(module, args, output):
        current.pop()

    hooks = [h for block in blocks for h in (block.register_forward_pre_hook(enter, with_kwargs=True),
                                            block.register_forward_hook(leave))]
    import transformers.masking_utils as masking

    sdpa, packed = torch.nn.functional.scaled_dot_product_attention, masking.find_packed_sequence_indices
    torch.nn.functional.scaled_dot_product_attention = _fused_attention
    masking.find_packed_sequence_indices = lambda position_ids: None  # reads positions: data the meta device lacks
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            _, logits = _llava_loss(model, batch, length, pixel_shape)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        masking.find_packed_sequence_indices = packed
        for hook in hooks:
            hook.remove()
    per_block: dict[int, int] = {}
    for size, owner in kept.values():
        per_block[owner] = per_block.get(owner, 0) + size
    full = sum(per_block.values())
    ckpt = [b for b in per_block if b and any(names[b].removeprefix("base_model.model.").startswith(p + ".")
                                               for p in checkpointed)]
    with_checkpointing = full - sum(per_block[b] for b in ckpt) + sum(inputs.get(b, 0) for b in ckpt)
    if ckpt:
        with_checkpointing += max(per_block[b] for b in ckpt)  # one block recomputed at a time
    return with_checkpointing, full, logits.numel() * 4


def meta_twin(model, policy, peft):
    """`model` rebuilt on the meta device from its config with `policy` applied (4-bit counted as LoRA, and no
    gradient checkpointing switched on: activation_bytes works out what checkpointing keeps)."""
    from vlmtune.train.policy import apply_policy

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.device("meta"):
        twin = type(base)(copy.deepcopy(base.config)).to(next(base.parameters()).dtype)
    plain = {part: replace(getattr(policy, part), gradient_checkpointing=False)
             for part in ("vision", "projector", "llm")}
    if policy.llm.mode == "qlora":
        plain["llm"] = replace(plain["llm"], mode="lora")
    twin = apply_policy(twin, replace(policy, **plain), peft)
    twin.train()
    return twin


def checkpointed_parts(model, policy) -> list[str]:
    from vlmtune.model.parts import parts_of

    parts = parts_of(model)
    return [parts[part] for part in ("vision", "llm") if getattr(policy, part).gradient_checkpointing]


def estimate(model, cfg, *, length: int, pixel_shape: tuple[int, ...] | None, deepspeed: bool | None = None,
             twin=None) -> MemoryEstimate:
    """The memory each device needs to train `model` (policy applied) as `cfg` says, per batch of `length` tokens.

    `twin`: a meta-device model with the policy applied (describe already has one); built here otherwise.
    """
    launcher = cfg.launcher
    if deepspeed is None:
        deepspeed = str(launcher.accelerate.get("distributed_type", "NO")).upper() == "DEEPSPEED"
    states = state_bytes(model, launcher, deepspeed)
    checkpointed = checkpointed_parts(model, cfg.policy)
    activations = other = logits = None
    if pixel_shape is not None and model.config.model_type in ("llava", "vlmtune"):
        from vlmtune.model.parts import parts_of

        twin = twin if twin is not None else meta_twin(model, cfg.policy, cfg.peft)
        every_block = [parts_of(twin)[part] for part in ("vision", "llm")]
        with_ckpt, full, logits = activation_bytes(twin, cfg.optim.batch_size, length, pixel_shape,
                                                   checkpointed or every_block)
        activations, other = (with_ckpt, full) if checkpointed else (full, with_ckpt)
    return MemoryEstimate(states["weights"], states["gradients"], states["optimizer"], activations, other, logits,
                          states["host"], bool(checkpointed), launcher.num_processes, _stage(launcher))


def device_capacity(launcher) -> int:
    """Memory of one device: launcher.device_memory_gb, else the GPU's, else host memory / processes per machine."""
    if launcher.device_memory_gb:
        return int(launcher.device_memory_gb * GIB)
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
    import psutil

    return psutil.virtual_memory().total // max(1, launcher.num_processes // launcher.num_machines)


class WontFit(ConfigError):
    """The run needs more memory per device than a device has."""


def suggestions(memory: MemoryEstimate, cfg, capacity: int) -> list[str]:
    """Changes that bring the estimate under `capacity`, each with what it would need."""
    ideas = []
    states = memory.weights + memory.gradients + memory.optimizer + (memory.logits_gradient or 0)
    if not memory.checkpointing and memory.activations_other is not None \
            and states + memory.activations_other <= capacity:
        ideas.append(f"policy.llm.gradient_checkpointing=true (and policy.vision.* for a trained tower): "
                     f"{(states + memory.activations_other) / GIB:.1f} GiB")
    if memory.activations and states < capacity:
        per_sample = memory.activations / cfg.optim.batch_size
        batch = int((capacity - states) // per_sample)
        if 0 < batch < cfg.optim.batch_size:
            ideas.append(f"optim.batch_size={batch} with optim.grad_accum={-(-cfg.optim.batch_size // batch)} "
                         "(the same batch per optimizer step)")
    if memory.stage < 3:
        ideas.append("launcher=zero3 (weights, gradients and optimizer states sharded over launcher.num_processes)")
    if cfg.policy.llm.mode == "full":
        ideas.append("peft=lora or peft=qlora (gradients and optimizer states for adapters only)")
    ideas.append("launcher.device_memory_gb=<GiB> if this device has more than counted, or launcher.preflight=false")
    return ideas


def check_fits(memory: MemoryEstimate, cfg, capacity: int) -> None:
    if memory.total <= capacity:
        return
    raise WontFit(f"this run needs about {memory.total / GIB:.3g} GiB per device and a device has "
                  f"{capacity / GIB:.3g} GiB:\n{memory.table(capacity)}\nTo fit, change one of:\n  - "
                  + "\n  - ".join(suggestions(memory, cfg, capacity)))


def _effective(launcher):
    """The launcher this process actually runs under: cfg.launcher, or what a user's own `accelerate launch
    --config_file` set up (the environment accelerate gives each rank)."""
    from vlmtune.processes import launched_engine

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == launcher.num_processes:
        return launcher
    launched = launched_engine()
    if launched == "DEEPSPEED":
        stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
        engine = {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": stage}}
    elif launched == "FSDP":
        engine = {"distributed_type": "FSDP"}
    else:
        engine = {"distributed_type": "MULTI_GPU" if world > 1 else "NO"}
    return replace(launcher, num_processes=world, accelerate=engine)


def pixel_shape(image_processor) -> tuple[int, ...]:
    from PIL import Image

    return tuple(image_processor(Image.new("RGB", (224, 224)), return_tensors="pt")["pixel_values"].shape)


def preflight(model, processor, cfg, lengths: list[int] | None) -> MemoryEstimate | None:
    """Before training: log memory per device for this run and raise `WontFit` when it cannot fit (the longest
    sample sets the length; launcher.preflight=false skips it)."""
    if not cfg.launcher.preflight:
        return None
    run_cfg = replace(cfg, launcher=_effective(cfg.launcher))
    length = max(lengths) if lengths else cfg.data.max_length
    if length is None:
        log.warning("preflight: no sample lengths (streamed data without data.max_length): activations not counted")
    shape = pixel_shape(processor.image_processor) if length else None
    memory = estimate(model, run_cfg, length=length or 0, pixel_shape=shape)
    capacity = device_capacity(run_cfg.launcher)
    log.info("preflight, batch %d x %s tokens:\n%s", cfg.optim.batch_size, length, memory.table(capacity))
    check_fits(memory, run_cfg, capacity)
    return memory
