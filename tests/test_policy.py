"""The per-part training policy: the table, every fail-fast case, per-part learning rates as optimizer groups,
per-part gradient checkpointing and the precision choice."""

from __future__ import annotations

import pytest
import torch

from vlmtune.config import LLMConfig, ModelConfig, OptimConfig, PartPolicy, PeftConfig, PolicyConfig, VisionConfig
from vlmtune.model.compose import compose
from vlmtune.train.policy import apply_policy, param_groups, parameter_table


@pytest.fixture
def model(tiny):
    vision = VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="default")
    return compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[0]  # untied lm_head


def _policy(vision="frozen", projector="full", llm="lora") -> PolicyConfig:
    return PolicyConfig(vision=PartPolicy(mode=vision), projector=PartPolicy(mode=projector), llm=PartPolicy(mode=llm))


def _trainable_parts(model) -> set[str]:
    from vlmtune.train.policy import part_of

    return {part_of(n) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("modes", "trained"),
    [
        (("frozen", "full", "frozen"), {"projector"}),
        (("frozen", "full", "lora"), {"projector", "llm"}),
        (("frozen", "full", "full"), {"projector", "llm", "lm_head"}),
        (("lora", "full", "lora"), {"vision", "projector", "llm"}),
        (("full", "frozen", "frozen"), {"vision"}),
    ],
)
def test_policy_modes_set_exactly_the_trainable_parts(model, modes, trained):
    model = apply_policy(model, _policy(*modes), PeftConfig())
    assert _trainable_parts(model) == trained
    table = parameter_table(model, _policy(*modes), OptimConfig(lr=3e-4))
    assert table.splitlines()[0].split() == ["part", "parameters", "trainable", "mode", "lr"]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert [rows[part][3] for part in ("vision", "projector", "llm")] == list(modes)


def test_nothing_trainable_is_refused(model):
    with pytest.raises(ValueError, match="nothing would train"):
        apply_policy(model, _policy("frozen", "frozen", "frozen"), PeftConfig())


def test_lora_landing_in_a_frozen_part_is_refused_with_a_name(model):
    with pytest.raises(ValueError, match=r"adapters on \[.vision.\].*vision_tower.*_proj"):
        apply_policy(model, _policy(), PeftConfig(target=r".*\.(q_proj|v_proj)"))


def test_lora_part_without_a_matching_module_is_refused(model):
    with pytest.raises(ValueError, match=r"marks \['vision'\] for LoRA but no module there matches"):
        apply_policy(model, _policy(vision="lora"), PeftConfig(vision_target=r"{vision}\.no_such_module"))


def test_trainable_part_without_parameters_is_refused(model, monkeypatch):
    from vlmtune.train import policy

    layout = {"vision": "model.vision_tower", "projector": "model.no_projector_here", "llm": "model.language_model"}
    monkeypatch.setattr(policy, "parts_of", lambda _: layout)
    with pytest.raises(ValueError, match=r"policy.projector.mode=full but no parameter of the projector"):
        apply_policy(model, _policy(llm="frozen"), PeftConfig())


def test_unknown_mode_and_qlora_without_4bit_are_refused(model):
    with pytest.raises(ValueError, match=r"policy.projector.mode=lora: expected one of frozen, full"):
        apply_policy(model, _policy(projector="lora"), PeftConfig())
    with pytest.raises(ValueError, match="needs the LLM loaded in 4-bit"):
        apply_policy(model, _policy(llm="qlora"), PeftConfig())


def test_per_part_learning_rates_become_optimizer_groups(model):
    policy = _policy()
    policy.projector.lr = 1e-3
    policy.projector.weight_decay = 0.1
    model = apply_policy(model, policy, PeftConfig())
    decay = {n for n, _ in model.named_parameters() if n.endswith("weight")}
    groups = param_groups(model, policy, OptimConfig(lr=2e-4, weight_decay=0.01), decay)
    by_part = {(g["part"], g["weight_decay"] > 0): g for g in groups}
    assert by_part[("projector", True)]["lr"] == 1e-3 and by_part[("projector", True)]["weight_decay"] == 0.1
    assert by_part[("projector", False)]["weight_decay"] == 0.0  # biases never decay
    assert by_part[("llm", True)]["lr"] == 2e-4 and by_part[("llm", True)]["weight_decay"] == 0.01
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_sft_with_a_zero_projector_rate_leaves_the_projector_untouched(pipeline, tmp_path):
    """Per-part rates reach the real optimizer: projector lr 0 -> the saved projector equals the base's."""
    from conftest import FAST, vlmtune
    from safetensors.torch import load_file

    base = pipeline["pretrain"] / "checkpoint"
    vlmtune("sft", f"run_dir={tmp_path / 'run'}", f"init_from={base}", "policy.projector.lr=0.0", "optim.lr=5e-3",
            "evaluate_at_end=false", "logger=none", *FAST)
    adapter = load_file(tmp_path / "run" / "checkpoint" / "adapter_model.safetensors")
    original = load_file(base / "model.safetensors")
    projector = {k: v for k, v in adapter.items() if "multi_modal_projector" in k}
    assert projector and any("lora_" in k for k in adapter)
    for name, value in projector.items():
        key = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
        saved = original.get(key, original.get(key.removeprefix("model.")))  # llava files keep the v4 key names
        assert saved is not None and torch.equal(value, saved), name
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # the LLM's adapter did train


def test_gradient_checkpointing_per_part_gives_the_same_gradients(tiny):
    from PIL import Image

    from vlmtune.tiny import IMAGE_SIZE

    conversation = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE),
                                                                                      "red")},
                                                 {"type": "text", "text": "What color?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same new projector both times
        vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full")
        model, processor = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))
        policy = PolicyConfig(vision=PartPolicy(mode="full", gradient_checkpointing=checkpointing),
                              llm=PartPolicy(mode="full", gradient_checkpointing=checkpointing))
        model = apply_policy(model, policy, PeftConfig())
        model.train()
        assert model.model.language_model.is_activation_checkpointing == checkpointing
        batch = processor.apply_chat_template([conversation], tokenize=True, return_dict=True, return_tensors="pt")
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_precision_choice_per_device():
    from vlmtune.train.trainer import precision_flags

    assert precision_flags("fp32") == (False, False)
    if torch.cuda.is_available():  # a GPU: bf16 where it is supported, fp16 allowed
        assert precision_flags("auto") == (torch.cuda.is_bf16_supported(), False)
        assert precision_flags("fp16") == (False, True)
    else:
        assert precision_flags("auto") == (False, False) and precision_flags("bf16") == (True, False)
        with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
            precision_flags("fp16")
    with pytest.raises(ValueError, match="expected auto, fp32, bf16 or fp16"):
        precision_flags("fp8")


@pytest.mark.parametrize(("recipe", "experiment"), [("pretrain", "llava15_stage1"), ("sft", "llava15_stage2")])
def test_llava15_experiment_configs_validate(recipe, experiment):
    """The published LLaVA-1.5 recipes compose and pass the typed schema (they need the hub to run)."""
    from conftest import REPO
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from vlmtune.hydra_setup import setup

    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(hydra_compose(recipe, overrides=[f"+experiment={experiment}", "run_dir=x"]))
    assert cfg.model.vision.path == "openai/clip-vit-large-patch14-336" and cfg.model.llm.path == "lmsys/vicuna-7b-v1.5"
    assert cfg.optim.batch_size * 8 == (256 if recipe == "pretrain" else 128)
    assert cfg.policy.llm.mode == ("frozen" if recipe == "pretrain" else "full")


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "pixel_shuffle"])
def test_vision_feature_cache_gives_the_same_logits_and_skips_the_encoder(tiny, tmp_path, projector):
    from PIL import Image

    from vlmtune.config import ProjectorConfig
    from vlmtune.tiny import IMAGE_SIZE
    from vlmtune.train.feature_cache import cache_vision_features

    vision = VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="patches", feature_layer=[-1, -2])
    model, processor = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                                           projector=ProjectorConfig(name=projector)))
    model = apply_policy(model, PolicyConfig(llm=PartPolicy(mode="frozen")), PeftConfig())
    conversations = [[{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (IMAGE_SIZE,) * 2, c)},
                                                   {"type": "text", "text": "Color?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": c}]}] for c in ("red", "blue")]
    batch = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                          padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
    stats = cache_vision_features(model, tmp_path / "features")
    with torch.no_grad():
        first = model(**batch).logits  # encodes both images and stores their features
        second = model(**batch).logits  # reads both from disk
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert stats == {"hits": 2, "misses": 2}
    assert len(list((tmp_path / "features").rglob("*.safetensors"))) == 2


def test_vision_feature_cache_refuses_a_training_tower(model, tmp_path):
    from vlmtune.train.feature_cache import cache_vision_features

    model = apply_policy(model, PolicyConfig(vision=PartPolicy(mode="full"), llm=PartPolicy(mode="frozen")),
                         PeftConfig())
    with pytest.raises(ValueError, match="needs a frozen vision tower"):
        cache_vision_features(model, tmp_path)


def test_pretrain_with_a_feature_cache_encodes_each_image_once(cache, tmp_path):
    from conftest import vlmtune

    out = vlmtune("pretrain", f"run_dir={tmp_path / 'run'}", f"vision_feature_cache={tmp_path / 'features'}",
                  "data.max_train_samples=8", "optim.batch_size=4", "optim.epochs=3", "logger=none")
    assert "vision feature cache: 16 images read from disk, 8 encoded" in out


def test_lora_rank_and_alpha_per_part(model):
    policy = _policy(vision="lora")
    policy.vision.lora_r, policy.vision.lora_alpha = 4, 8
    policy.llm.lora_r = 12
    model = apply_policy(model, policy, PeftConfig(r=16, alpha=32))
    ranks = {}
    for name, module in model.named_modules():
        if hasattr(module, "r") and isinstance(module.r, dict) and "default" in module.r:
            part = "vision" if "vision_tower" in name else "llm"
            ranks.setdefault(part, set()).add((module.r["default"], module.scaling["default"]))
    assert ranks == {"vision": {(4, 2.0)}, "llm": {(12, 32 / 12)}}


def _lora_layers(model) -> dict[str, list]:
    from peft.tuners.lora import LoraLayer

    from vlmtune.train.policy import part_of

    layers: dict[str, list] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            layers.setdefault(part_of(name), []).append(module)
    return layers


def test_lora_dropout_and_rslora_per_part_survive_a_saved_adapter(model, tiny, tmp_path):
    """Vision: rsLoRA and dropout 0.2; LLM: plain LoRA scale and peft's dropout 0.05. The scales are written into
    the adapter config, so peft alone rebuilds them; the table shows each part's settings."""
    from peft import PeftModel

    policy = _policy(vision="lora")
    policy.vision.lora_r, policy.vision.use_rslora, policy.vision.lora_dropout = 4, True, 0.2
    peft = PeftConfig(r=16, alpha=32, dropout=0.05)
    adapted = apply_policy(model, policy, peft)
    layers = _lora_layers(adapted)
    assert {(m.scaling["default"], m.lora_dropout["default"].p) for m in layers["vision"]} == {(32 / 4**0.5, 0.2)}
    assert {(m.scaling["default"], m.lora_dropout["default"].p) for m in layers["llm"]} == {(32 / 16, 0.05)}
    table = parameter_table(adapted, policy, OptimConfig(), peft)
    rows = {line.split()[0]: line.split() for line in table.splitlines()}
    assert rows["part"][-1] == "lora"
    assert rows["vision"][-1] == "r=4,alpha=32,dropout=0.2,rslora"
    assert rows["llm"][-1] == "r=16,alpha=32,dropout=0.05"

    adapted.save_pretrained(tmp_path / "adapter")
    vision = VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="default")
    fresh = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[0]
    reloaded = _lora_layers(PeftModel.from_pretrained(fresh, tmp_path / "adapter"))
    assert {m.scaling["default"] for m in reloaded["vision"]} == {32 / 4**0.5}
    assert {m.scaling["default"] for m in reloaded["llm"]} == {32 / 16}


def test_plain_lora_part_under_adapter_wide_rslora(model):
    policy = _policy(vision="lora")
    policy.llm.use_rslora = False
    layers = _lora_layers(apply_policy(model, policy, PeftConfig(r=16, alpha=32, use_rslora=True)))
    assert {m.scaling["default"] for m in layers["vision"]} == {32 / 16**0.5}
    assert [m.scaling["default"] for m in layers["llm"]] == pytest.approx([32 / 16] * len(layers["llm"]))


def test_vision_weights_after_the_feature_layer_stay_frozen(model):
    """Tiny CLIP feeds the projector from its first layer (feature_layer -2 of 2): LoRA leaves the second layer out,
    a full fine-tune leaves it frozen; everything before it trains."""
    lora = apply_policy(model, _policy(vision="lora"), PeftConfig())
    adapted = {n.split(".lora_")[0] for n, _ in lora.named_parameters() if "vision_tower" in n and "lora_A" in n}
    assert adapted and all(".layers.0." in n for n in adapted)


def test_a_full_vision_tower_trains_only_what_reaches_the_projector(tiny):
    vision = VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="default")
    model = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[0]
    model = apply_policy(model, _policy(vision="full", llm="frozen"), PeftConfig())
    trains = {n for n, p in model.named_parameters() if p.requires_grad and "vision_tower" in n}
    assert any(".layers.0." in n for n in trains) and any("embeddings" in n for n in trains)
    assert not any(".layers.1." in n or "post_layernorm" in n for n in trains)


def test_vision_lora_behind_a_feature_layer_at_the_embeddings_is_refused(tiny):
    """Tiny SigLIP's features are its patch embeddings (feature_layer -3): no encoder layer can learn anything."""
    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full", feature_layer=-3)
    model = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[0]
    refusal = r"marks \['vision'\] for LoRA .*feature_layer \(here -3\).*layers\.0\.mlp\.fc1"
    with pytest.raises(ValueError, match=refusal):
        apply_policy(model, _policy(vision="lora"), PeftConfig())
