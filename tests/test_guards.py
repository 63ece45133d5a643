"""A non-finite loss (or weights) stops training with an error naming the step and the last good checkpoint, which is
never overwritten by a checkpoint of NaN weights and stays resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, vlmtune
from safetensors.torch import load_file
from transformers import TrainerCallback

from vlmtune.train.checkpoints import latest_complete_checkpoint


def _cfg(run_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vlmtune.hydra_setup import setup

    setup()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="sft", overrides=[f"run_dir={run_dir}", "logger=none", "optim.batch_size=4",
                                                    "logging_steps=1", *overrides])
    return OmegaConf.to_object(cfg)


def _dpo_cfg(run_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from vlmtune.hydra_setup import setup

    setup()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="dpo", overrides=[f"run_dir={run_dir}", "logger=none", "optim.batch_size=4",
                                                    "logging_steps=1", *overrides])
    return OmegaConf.to_object(cfg)


class Poison(TrainerCallback):
    """Turns every trainable weight into NaN at the end of step `at` (what a diverging run does on its own)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.at:
            with torch.no_grad():
                for param in model.parameters():
                    if param.requires_grad:
                        param.fill_(float("nan"))


def _train(cfg, callbacks=()):
    from vlmtune.data.records import to_dataset, training_samples
    from vlmtune.model.compose import compose
    from vlmtune.train.policy import apply_policy
    from vlmtune.train.sft import fit

    model, processor = compose(cfg.model)
    model = apply_policy(model, cfg.policy, cfg.peft)
    records, _ = training_samples(cfg.data, processor)
    return fit(model, processor, to_dataset(records), cfg, Path(cfg.run_dir) / "trainer", report_to="none",
               callbacks=list(callbacks))


def _finite(checkpoint: Path) -> bool:
    weights = load_file(checkpoint / "adapter_model.safetensors")
    return bool(weights) and all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_a_nan_loss_stops_before_its_step_is_saved_and_the_last_good_checkpoint_resumes(cache, tmp_path):
    from vlmtune.train.guards import NonFiniteLoss

    cfg = _cfg(tmp_path, "optim.max_steps=6", "save_steps=2", "save_total_limit=1")
    with pytest.raises(NonFiniteLoss) as caught:
        _train(cfg, [Poison(at=3)])  # weights NaN after step 3: the loss of step 4 is NaN
    good = tmp_path / "trainer" / "checkpoint-2"
    message = str(caught.value)
    assert "training loss became nan at step 4" in message and str(good) in message
    # save_total_limit=1 would have replaced checkpoint-2 with a NaN checkpoint-4 (and -6) had training gone on.
    assert latest_complete_checkpoint(tmp_path / "trainer") == good
    assert sorted(p.name for p in (tmp_path / "trainer").glob("checkpoint-*")) == ["checkpoint-2"]
    assert _finite(good)

    history = _train(cfg)  # resume=auto from checkpoint-2, no poison: finishes
    assert history[-1]["step"] == 6 and min(e["step"] for e in history if "loss" in e) == 1
    state = json.loads((tmp_path / "trainer" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert _finite(tmp_path / "trainer" / "checkpoint-6")


def test_nan_weights_after_a_finite_loss_are_not_saved(cache, tmp_path):
    from vlmtune.train.guards import NonFiniteLoss

    cfg = _cfg(tmp_path, "optim.max_steps=4", "save_steps=1")
    with pytest.raises(NonFiniteLoss, match="weights became non-finite .* at step 2") as caught:
        _train(cfg, [Poison(at=2)])  # step 2's loss was finite, its update is not: step 2 must not be saved
    assert str(tmp_path / "trainer" / "checkpoint-1") in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "trainer").glob("checkpoint-*")) == ["checkpoint-1"]


def test_an_absurd_learning_rate_fails_with_the_step_and_checkpoint(cache, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(AssertionError) as caught:
        vlmtune("sft", f"run_dir={out}", "optim.max_steps=6", "optim.batch_size=4", "save_steps=1", "optim.lr=1e30",
                "optim.max_grad_norm=0", "optim.warmup_ratio=0", "optim.scheduler=constant", "logger=none",
                "evaluate_at_end=false")
    output = str(caught.value)
    assert "error: the training loss became" in output and "Traceback" not in output
    step = int(output.split("at step ")[1].split(":")[0])
    last_good = latest_complete_checkpoint(out / "trainer")
    assert last_good is not None and last_good.name == f"checkpoint-{step - 1}" and str(last_good) in output
    assert not (out / "trainer" / f"checkpoint-{step}").exists() and not (out / "checkpoint").exists()


def test_a_trained_part_that_gets_no_gradient_stops_the_run_with_its_name(cache, tmp_path):
    """A trained vision tower on text-only data: no batch ever reaches it, so it would never change."""
    from vlmtune.train.guards import UntrainedPart

    text_only = [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say {i}."},
                                                   {"from": "gpt", "value": str(i)}]} for i in range(16)]
    (tmp_path / "text.json").write_text(json.dumps(text_only))
    cfg = _cfg(tmp_path, "policy.vision.mode=full", "policy.projector.mode=frozen", "optim.max_steps=3",
               f"data.train={tmp_path / 'text.json'}")
    with pytest.raises(UntrainedPart, match=r"trains the vision \(model.vision_tower\).* in 3 optimizer step"):
        _train(cfg)


def test_trainable_tensors_without_gradient_in_a_learning_part_are_a_warning(cache, tmp_path, caplog):
    """The guard on real Trainer state: every LLM tensor but one gets a gradient for `steps` steps -> a warning that
    names the one; nothing raises, since the LLM learns."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from vlmtune.model.compose import compose
    from vlmtune.train.guards import UntrainedPartGuard
    from vlmtune.train.policy import apply_policy

    cfg = _cfg(tmp_path, "peft=none", "policy.llm.mode=full")
    model = apply_policy(compose(cfg.model)[0], cfg.policy, cfg.peft)
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    idle = next(name for name, _ in trainable if "language_model.layers.1." in name)
    for name, param in trainable:
        param.grad = None if name == idle else torch.ones_like(param)
    guard = UntrainedPartGuard(steps=2)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerState(), TrainerControl()
    with caplog.at_level("WARNING", logger="vlmtune"):
        for _ in range(2):
            guard.on_pre_optimizer_step(args, state, control, model=model)
    warnings = [r.getMessage() for r in caplog.records if "received no gradient" in r.getMessage()]
    assert len(warnings) == 1 and "1 trainable tensors of the llm" in warnings[0] and idle in warnings[0]


def test_dpo_stops_on_a_nan_loss_before_saving_that_step(pipeline, tmp_path):
    """The same guard, on DPO's own loss (computed by DPOTrainer, not by the model's forward)."""
    from vlmtune.data.preferences import read_preference_split, to_preference_dataset
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.train.dpo import fit_dpo
    from vlmtune.train.guards import NonFiniteLoss
    from vlmtune.train.policy import apply_policy

    cfg = _dpo_cfg(tmp_path, "optim.max_steps=6", "save_steps=2", "save_total_limit=1",
                   f"init_from={pipeline['sft'] / 'checkpoint'}")
    model, processor = load_vlm(pipeline["sft"] / "checkpoint")
    model = apply_policy(model, cfg.policy, cfg.peft)
    pairs = to_preference_dataset(read_preference_split(cfg.data, "train"))
    with pytest.raises(NonFiniteLoss, match="training loss became nan at step 4"):
        fit_dpo(model, processor, pairs, cfg, tmp_path / "trainer", report_to="none", callbacks=[Poison(at=3)])
    assert latest_complete_checkpoint(tmp_path / "trainer").name == "checkpoint-2"
    assert sorted(p.name for p in (tmp_path / "trainer").glob("checkpoint-*")) == ["checkpoint-2"]


def _processor(tiny):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.compose import blueprint

    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full")
    return blueprint(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama")))).processor()


def _chat(i: int, answer: str) -> dict:
    return {"id": f"s{i}", "images": [], "messages": [
        {"role": "user", "content": [{"type": "text", "text": f"Say {i}."}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


class _Unmark:
    """A collator whose sample `s1` loses its supervision (what a cut answer or a template without marks does)."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        text = batch["position_ids"].reshape(-1, batch["position_ids"].shape[-1])[0]
        starts = [*(text == 0).nonzero().flatten().tolist(), text.numel()]
        batch["labels"][0, starts[1]:starts[2]] = -100  # the second sample of the packed row
        return batch


def test_a_packed_row_with_one_unsupervised_sample_is_refused(tiny):
    from vlmtune.data.packing import PackedCollator
    from vlmtune.errors import DataError
    from vlmtune.train.supervision import RequireSupervised

    processor = _processor(tiny)
    examples = [_chat(0, "zero"), _chat(1, "one"), _chat(2, "two")]
    packed = RequireSupervised(PackedCollator(processor))
    assert packed(examples)["input_ids"].shape[0] == 1  # one row, all three samples supervised: fine
    with pytest.raises(DataError, match=r"samples \['s1'\] have no supervised token"):
        RequireSupervised(_Unmark(PackedCollator(processor)))(examples)


def test_the_supervision_check_refuses_what_it_cannot_read(tiny):
    from vlmtune.errors import DataError
    from vlmtune.train.supervision import check_supervision

    processor = _processor(tiny)
    with pytest.raises(DataError, match="holds no sample"):
        check_supervision(lambda examples: {}, processor.tokenizer, [])
    with pytest.raises(DataError, match=r"cannot check the loss mask of samples with keys \['text'\]"):
        check_supervision(lambda examples: {}, processor.tokenizer, [{"text": "hello"}])


def test_dpo_pairs_whose_completions_miss_the_answer_are_refused(tiny, shapes):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlmtune.data.preferences import read_preferences, to_preference_dataset
    from vlmtune.errors import DataError
    from vlmtune.train.supervision import RequireSupervised, check_supervision

    processor = _processor(tiny)
    pairs = to_preference_dataset(read_preferences(shapes / "preferences_train.json")[:4])
    collator = DataCollatorForVisionPreference(processor)
    check_supervision(collator, processor.tokenizer, pairs)  # completions = chosen / rejected + end of turn

    def drop_rejected(examples):
        batch = collator(examples)
        batch["completion_mask"][len(examples):] = 0  # every rejected completion masked
        return batch

    with pytest.raises(DataError, match=r"\(rejected\): no token is supervised"):
        check_supervision(drop_rejected, processor.tokenizer, pairs)
    with pytest.raises(DataError, match="have no supervised token"):
        RequireSupervised(drop_rejected)([pairs[i] for i in range(4)])
