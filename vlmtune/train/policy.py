"""What trains, part by part: one policy table (`policy.vision|projector|llm`: mode, learning rate, weight decay,
gradient checkpointing), verified at start and printed, with per-part learning rates as optimizer groups.

Modes: `frozen`, `full` (every weight trains; saved inside a LoRA adapter as `modules_to_save`, so adapter
directories are self-contained), `lora` (one PEFT adapter over all LoRA parts, targets from `peft.target` /
`peft.vision_target`) and `qlora` (the LLM only: loaded in 4-bit by the recipe, LoRA on top). Module paths come from
vlmtune.model.parts (per architecture: Llava's `model.vision_tower`, `model.multi_modal_projector`,
`model.language_model`; Idefics3's `model.vision_model`, `model.connector`, `model.text_model`; Qwen2-VL's
`model.visual`, `model.visual.merger`, `model.language_model`) and `lm_head`, which follows the LLM when it trains
fully.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from vlmtune.config import OptimConfig, PartPolicy, PeftConfig, PolicyConfig
from vlmtune.errors import PolicyError
from vlmtune.model.parts import PART_NAMES, parts_of
from vlmtune.model.parts import part_of as part_at_path
from vlmtune.train.reach import unused_vision_parameters

log = logging.getLogger("vlmtune")

LLM_PLACEHOLDER = "{llm}"  # in peft.target: the LLM's module path for the model's architecture
VISION_PLACEHOLDER = "{vision}"  # in peft.vision_target


def part_of(name: str, parts: dict[str, str] | None = None) -> str:
    """Which part a parameter name belongs to (PEFT prefixes names with base_model.model.); Llava layout default."""
    return part_at_path(name, parts or parts_of("llava"))


def _modes(policy: PolicyConfig) -> dict[str, str]:
    """Each part's mode (valid per part, not all frozen: checked by PolicyConfig when the config is composed)."""
    return {part: getattr(policy, part).mode for part in PART_NAMES}


def _trains(part: str, modes: dict[str, str]) -> bool:
    """lm_head trains with a fully-trained LLM; the other parts by their own mode."""
    return modes["llm"] == "full" if part == "lm_head" else modes.get(part, "frozen") != "frozen"


def parameter_table(model, policy: PolicyConfig | None = None, optim: OptimConfig | None = None,
                    peft: PeftConfig | None = None) -> str:
    """Parameters per part, trainable and frozen (and each part's mode, learning rate and LoRA settings), as a
    printable table."""
    parts = parts_of(model)
    total, trainable = Counter(), Counter()
    for name, param in model.named_parameters():
        if ".original_module." in name:  # PEFT keeps the frozen original beside the trained copy (modules_to_save)
            continue
        part = part_of(name, parts)
        total[part] += param.numel()
        if param.requires_grad:
            trainable[part] += param.numel()

    def policy_cells(part: str) -> str:
        if policy is None:
            return ""
        if part not in PART_NAMES:
            return f" {'(llm)' if part == 'lm_head' else '':>8} {'':>9}"
        rule = getattr(policy, part)
        lr = rule.lr if rule.lr is not None else optim.lr if optim else None
        lora = f" {lora_settings(rule, peft)}" if peft is not None and rule.mode in ("lora", "qlora") else ""
        return f" {rule.mode:>8} {'' if rule.mode == 'frozen' or lr is None else f'{lr:.1e}':>9}{lora}"

    header = f"{'part':<10} {'parameters':>12} {'trainable':>12}"
    rows = [header + (f" {'mode':>8} {'lr':>9}" if policy is not None else "") + (" lora" if peft is not None else "")]
    for part in [*PART_NAMES, "lm_head", "other"]:
        if total[part]:
            rows.append(f"{part:<10} {total[part]:>12,} {trainable[part]:>12,}{policy_cells(part)}")
    rows.append(f"{'total':<10} {sum(total.values()):>12,} {sum(trainable.values()):>12,}")
    return "\n".join(rows)


def bnb_4bit_config(peft: PeftConfig, model_type: str = "llava"):
    """QLoRA's 4-bit LLM: vision tower, projector and lm_head stay in full precision."""
    from vlmtune.processes import launched_engine
    from vlmtune.quantize import bnb_config

    compute = getattr(torch, peft.compute_dtype)
    # Under FSDP (an accelerate launch with an FSDP config) the 4-bit weights are stored in the compute dtype, so
    # FSDP can shard them with the rest (FSDP-QLoRA).
    fsdp = launched_engine() == "FSDP"
    return bnb_config(4, peft.quant_type, compute, peft.double_quant, model_type=model_type,
                      storage_dtype=compute if fsdp else None)


def quantization_for(cfg, base: str):
    """The load-time quantization a training run's policy needs for the checkpoint `base`: 4-bit under qlora."""
    from vlmtune.model.parts import model_type_at

    return bnb_4bit_config(cfg.peft, model_type_at(base)) if cfg.policy.llm.mode == "qlora" else None


def lora_target(target: str, parts: dict[str, str]) -> str:
    """A LoRA target with `{llm}` / `{vision}` replaced by the architecture's module paths (escaped for the regex)."""
    return target.replace(LLM_PLACEHOLDER, re.escape(parts["llm"])).replace(VISION_PLACEHOLDER,
                                                                          re.escape(parts["vision"]))


@dataclass(frozen=True)
class LoraSettings:
    """One part's LoRA: its own values where policy.<part> sets them, peft's otherwise."""

    r: int
    alpha: float
    dropout: float
    rslora: bool
    dora: bool

    def __str__(self) -> str:  # one whitespace-free cell of the parameter table
        flags = "".join(f",{name}" for name, on in (("rslora", self.rslora), ("dora", self.dora)) if on)
        return f"r={self.r},alpha={self.alpha:g},dropout={self.dropout:g}{flags}"


def lora_settings(rule: PartPolicy, peft: PeftConfig) -> LoraSettings:
    """The LoRA settings a part in lora / qlora mode trains with."""
    return LoraSettings(r=_own_or(rule.lora_r, peft.r), alpha=_own_or(rule.lora_alpha, peft.alpha),
                        dropout=_own_or(rule.lora_dropout, peft.dropout),
                        rslora=_own_or(rule.use_rslora, peft.use_rslora), dora=_own_or(rule.use_dora, peft.use_dora))


def _own_or(own, shared):
    return shared if own is None else own


def _set_dropout(model, dropout: dict[str, float], parts: dict[str, str]) -> None:
    """Per-part LoRA dropout: peft builds every layer with the adapter's one rate, so the parts that differ get their
    own dropout module (it has no weights: the saved adapter is unchanged, and resuming re-applies the policy)."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and (p := dropout.get(part_of(name, parts))) is not None:
            for adapter in module.lora_dropout:
                module.lora_dropout[adapter] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def _lora_config(settings: dict[str, LoraSettings], peft: PeftConfig, parts: dict[str, str],
                 modules_to_save: list[str], unused_vision: list[str]):
    """One peft LoraConfig for the parts in `settings` (they share DoRA); `unused_vision` names the vision modules
    that the targets would hit but that never reach the features (left out)."""
    from peft import LoraConfig

    targets = {"llm": peft.target, "vision": peft.vision_target}
    pattern = "|".join(f"(?:{lora_target(targets[part], parts)})" for part in settings)
    vision_pattern = re.compile(lora_target(peft.vision_target, parts))
    exclude = [name for name in unused_vision if "vision" in settings and vision_pattern.fullmatch(name)]
    # Per-part rank and alpha through peft's patterns, keyed by the part's target, so that the saved adapter config
    # rebuilds them anywhere. rsLoRA differs from LoRA only in the scale (alpha / sqrt(r) instead of alpha / r), so a
    # part that departs from peft.use_rslora gets the alpha that gives its scale under the adapter-wide rule.
    rank_pattern, alpha_pattern = {}, {}
    for part, lora in settings.items():
        key = lora_target(targets[part], parts)
        if lora.r != peft.r:
            rank_pattern[key] = lora.r
        alpha = lora.alpha
        if lora.rslora != peft.use_rslora:
            alpha = alpha * math.sqrt(lora.r) if lora.rslora else alpha / math.sqrt(lora.r)
        if alpha != peft.alpha:
            alpha_pattern[key] = alpha
    return LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout,
                      use_dora=next(iter(settings.values())).dora, use_rslora=peft.use_rslora,
                      target_modules=pattern, exclude_modules=exclude or None, modules_to_save=modules_to_save or None,
                      rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, task_type="CAUSAL_LM")


def activate_adapters(model) -> None:
    """Make every adapter of a PeftModel active and trainable (peft's own set_adapter activates one by name)."""
    model.base_model.set_adapter(list(model.peft_config))


def _lora(model, rules: dict[str, PartPolicy], peft: PeftConfig, parts: dict[str, str], unused_vision: list[str]):
    from peft import get_peft_model, prepare_model_for_kbit_training

    modes = {part: rule.mode for part, rule in rules.items()}
    if modes["llm"] == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise PolicyError("policy.llm.mode=qlora needs the LLM loaded in 4-bit (bnb_4bit_config at load time)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora_parts = {part for part, mode in modes.items() if mode in ("lora", "qlora")}
    # Fully-trained parts are saved inside the adapter, so the adapter directory is self-contained.
    full = [parts[part] for part, mode in modes.items() if mode == "full"] + (["lm_head"] if modes["llm"] == "full"
                                                                               else [])
    settings = {part: lora_settings(rules[part], peft) for part in sorted(lora_parts)}
    # peft decides DoRA per adapter: when the vision tower and the LLM differ in it, the vision tower gets an adapter of
    # its own ("vision", saved in the adapter directory's vision/ folder); otherwise one adapter covers every part.
    adapters = {"default": sorted(lora_parts)}
    if len({lora.dora for lora in settings.values()}) > 1:
        adapters = {"default": ["llm"], "vision": ["vision"]}
    for name, group in adapters.items():
        config = _lora_config({part: settings[part] for part in group}, peft, parts,
                              modules_to_save=full if name == "default" else [], unused_vision=unused_vision)
        if name == "default":
            model = get_peft_model(model, config)
        else:
            model.add_adapter(name, config)
    if len(adapters) > 1:
        activate_adapters(model)
    _set_dropout(model, {part: lora.dropout for part, lora in settings.items() if lora.dropout != peft.dropout}, parts)
    landed = defaultdict(list)
    for name, _ in model.named_parameters():
        if "lora_" in name:
            landed[part_of(name, parts)].append(name)
    stray = {part: names for part, names in landed.items() if part not in lora_parts}
    if stray:
        part, names = next(iter(stray.items()))
        raise PolicyError(f"the LoRA targets put adapters on {sorted(stray)}, which policy does not adapt (e.g. "
                          f"{names[0]}); LoRA must stay on the LLM only unless policy.<part>.mode=lora. Fix "
                          f"peft.target / peft.vision_target ({LLM_PLACEHOLDER} stands for {parts['llm']})")
    missing = lora_parts - set(landed)
    if missing:
        targeted = [m for m in unused_vision if re.fullmatch(lora_target(peft.vision_target, parts), m)]
        cut = (f"; the vision modules after model.vision.feature_layer (here "
               f"{model.config.vision_feature_layer}) never reach the projector and are left out, e.g. "
               f"{(targeted or unused_vision)[0]}") if "vision" in missing and unused_vision else ""
        raise PolicyError(f"policy marks {sorted(missing)} for LoRA but no module there matches peft.target / "
                          f"peft.vision_target ({LLM_PLACEHOLDER} = {parts['llm']}, {VISION_PLACEHOLDER} = "
                          f"{parts['vision']}){cut}")
    return model


def apply_policy(model, policy: PolicyConfig, peft: PeftConfig):
    """Freeze, adapt and unfreeze per `policy`; fail fast (with names) when it cannot be honoured; return the model
    (PEFT-wrapped when a part is in lora / qlora mode)."""
    modes = _modes(policy)
    parts = parts_of(model)
    # Vision weights that never reach the features the projector reads (vlmtune.train.reach) stay frozen in every
    # mode: LoRA leaves their modules out, a full fine-tune leaves them untouched.
    unused = unused_vision_parameters(model, parts["vision"]) if modes["vision"] != "frozen" else set()
    if unused:
        log.info("%d vision tensors after model.vision.feature_layer do not reach the projector: they stay frozen "
                 "(e.g. %s)", len(unused), sorted(unused)[0])
    unused_modules = sorted({f"{parts['vision']}.{name.rpartition('.')[0]}" for name in unused})
    if any(mode in ("lora", "qlora") for mode in modes.values()):
        model = _lora(model, {part: getattr(policy, part) for part in PART_NAMES}, peft, parts, unused_modules)
    else:
        for name, param in model.named_parameters():
            param.requires_grad = _trains(part_of(name, parts), modes)
    for name, param in model.named_parameters():
        if _vision_relative(name, parts["vision"]) in unused:
            param.requires_grad = False
    trained = {part_of(name, parts) for name, param in model.named_parameters() if param.requires_grad}
    for part, mode in modes.items():
        if mode != "frozen" and part not in trained:
            raise PolicyError(f"policy.{part}.mode={mode} but no parameter of the {part} ({parts[part]}) would train")
    _gradient_checkpointing(model, policy, parts)
    return model


def _vision_relative(name: str, vision_path: str) -> str | None:
    """A parameter's name inside the vision tower (PEFT's prefix and modules_to_save copy removed), or None."""
    name = name.removeprefix("base_model.model.")
    if not name.startswith(vision_path + "."):
        return None
    return name[len(vision_path) + 1:].removeprefix("modules_to_save.default.")


def _gradient_checkpointing(model, policy: PolicyConfig, parts: dict[str, str]) -> None:
    """Per part: recompute activations in the backward pass (non-reentrant: works with frozen inputs too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for part in ("vision", "llm"):
        if getattr(policy, part).gradient_checkpointing:
            module = base.get_submodule(parts[part])
            if not getattr(module, "supports_gradient_checkpointing", False):
                raise PolicyError(f"policy.{part}.gradient_checkpointing=true: {type(module).__name__} does not "
                                  "support gradient checkpointing")
            # transformers 5's name; `gradient_checkpointing_enable` is its deprecated alias (FutureWarning)
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def param_groups(model, policy: PolicyConfig, optim: OptimConfig, decay_names: set[str]) -> list[dict]:
    """AdamW parameter groups: one per (part, decays or not), with the part's learning rate and weight decay."""
    parts = parts_of(model)
    groups: dict[tuple[str, bool], list] = defaultdict(list)
    for name, param in model.named_parameters():
        if param.requires_grad:
            part = part_of(name, parts)
            groups[(part, name in decay_names)].append(param)
    out = []
    for (part, decays), params in sorted(groups.items()):
        rule = getattr(policy, "llm" if part in ("lm_head", "other") else part)
        decay = rule.weight_decay if rule.weight_decay is not None else optim.weight_decay
        out.append({"params": params, "lr": rule.lr if rule.lr is not None else optim.lr,
                    "weight_decay": decay if decays else 0.0, "part": part})
    return out
