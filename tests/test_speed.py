"""The speed-ups keep the plain path's loss: the LM head on supervised positions only, length-aware batches under a
token budget, the vision feature cache in sft; and the benchmarks run end to end (their figures come from
`make bench`, never from tests)."""

from __future__ import annotations

import json
import random
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def model_and_processor(tiny):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.compose import compose

    torch.manual_seed(0)
    return compose(ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "clip")),
                               llm=LLMConfig(path=str(tiny / "llm" / "llama"))))


def _examples(tmp_path) -> list[dict]:
    """Samples of very different lengths: multi-turn with two images, one image, text only, a long answer."""
    from vlmtune.data.records import read_samples, to_dataset

    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    Image.new("RGB", (20, 12), "blue").save(tmp_path / "blue.png")

    def turns(*pairs):
        return [{"from": who, "value": text} for q, a in pairs for who, text in (("human", q), ("gpt", a))]

    records = [
        {"id": "mt", "image": ["red.png", "blue.png"], "conversations": turns(
            ("<image>\nWhat color?", "red"), ("<image>\nAnd this one?", "blue"), ("Same?", "no"))},
        {"id": "one", "image": "red.png", "conversations": turns(("<image>\nWhat color?", "red"))},
        {"id": "text", "conversations": turns(("Say no.", "no"))},
        {"id": "long", "image": "blue.png", "conversations": turns(
            ("<image>\nDescribe the image.", "a blue square, a red circle and a green triangle " * 6))},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    return list(to_dataset(read_samples(tmp_path / "d.json")))


@pytest.mark.parametrize("head", ["frozen", "trained"])
def test_supervised_head_gives_the_plain_loss_per_sample_and_its_gradients(model_and_processor, tmp_path, head,
                                                                          monkeypatch):
    """One padded batch through the supervised-only head: each sample's loss equals the model's own loss on that
    sample alone (full logits, transformers' cross-entropy), and the batch's gradients equal the plain path's. A
    frozen head (LoRA, QLoRA) takes vlmtune's gradient-in-the-forward pass, a trained one TRL's kernel."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.train import supervised_head
    from vlmtune.train.supervised_head import supervised_token_log_probs, use_supervised_head

    model, processor = model_and_processor
    model.lm_head.weight.requires_grad_(head == "trained")
    called = []
    original = supervised_head.FrozenHeadLogProbs.apply
    monkeypatch.setattr(supervised_head.FrozenHeadLogProbs, "apply", lambda *a: called.append(1) or original(*a))
    collate = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    examples = _examples(tmp_path)
    batch = collate(examples)
    model.train()
    alone = [model(**collate([example])).loss for example in examples]
    plain = model(**batch)  # transformers' loss over the whole padded batch: the mean over supervised tokens
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    assert use_supervised_head(model)
    log_probs = supervised_token_log_probs(model, batch)
    mask = batch["labels"][:, 1:] != -100
    per_sample = -log_probs.sum(dim=1) / mask.sum(dim=1)
    torch.testing.assert_close(per_sample, torch.stack(alone).detach(), atol=1e-5, rtol=1e-5)
    fused = model(**batch, fused_lm_head=True)
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-5, rtol=1e-5)
    fused.loss.backward()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()
    # Without fused_lm_head the model's own forward runs (generation, evaluation): its loss, its logits.
    torch.testing.assert_close(model(**batch).loss, plain.loss, atol=0, rtol=0)
    model.lm_head.weight.requires_grad_(True)
    assert bool(called) == (head == "frozen")
    if head == "frozen":  # the entropy and top-1 match it reports for SFTTrainer's metrics are the full logits' too
        logits = plain.logits[:, :-1].float()[mask]
        log_p = logits.log_softmax(-1)
        torch.testing.assert_close(fused.entropy[mask], -(log_p.exp() * log_p).sum(-1), atol=1e-4, rtol=1e-4)
        assert torch.equal(fused.is_top1[mask], logits.argmax(-1) == batch["labels"][:, 1:][mask])


def test_supervised_head_keeps_trl_head_for_heads_it_does_not_reproduce(model_and_processor):
    from vlmtune.train.supervised_head import supports_supervised_head

    model, _ = model_and_processor
    assert supports_supervised_head(model)
    text_config = model.config.get_text_config()
    text_config.logits_scaling = 4.0  # Granite-style output scaling: TRL's head knows it, this one does not
    try:
        assert not supports_supervised_head(model)
    finally:
        del text_config.logits_scaling


def _llava_like_lengths(n: int, seed: int = 0) -> list[int]:
    """49 image tokens + 16-400 text tokens, skewed like LLaVA-Instruct."""
    rng = random.Random(seed)
    return [49 + int(min(400, max(16, rng.lognormvariate(4.8, 0.6)))) for _ in range(n)]


def test_token_budget_batches_visit_each_sample_once_per_epoch_with_little_padding():
    from vlmtune.data.batching import TokenBudgetBatches, default_budget

    lengths = _llava_like_lengths(300)
    budget = default_budget(lengths, 8)
    batches = TokenBudgetBatches(lengths, budget, seed=3)
    epochs = []
    for epoch in range(2):
        batches.set_epoch(epoch)
        epochs.append(list(batches))
        assert sorted(i for batch in epochs[-1] for i in batch) == list(range(300))  # every sample, once
        assert all(len(b) * max(lengths[i] for i in b) <= budget for b in epochs[-1])
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])  # same batches, new order
    batches.set_epoch(1)
    assert list(batches) == epochs[1]  # an epoch replays exactly (resume)
    assert len(batches) == 38 and budget <= 8 * max(lengths)  # the steps of fixed batches of 8, never more padded
    rng = random.Random(0)
    order = rng.sample(range(300), 300)
    random_slots = sum(8 * max(lengths[i] for i in order[k:k + 8]) for k in range(0, 300, 8))
    assert 1 - sum(lengths) / random_slots > 0.25 > 0.05 > batches.padding(lengths)


def test_token_budget_batches_over_processes_give_each_step_the_one_process_batch():
    """Each process takes every n-th sample of the same global batch; when every batch holds a sample per process
    (these lengths), the global batches are the ones a single process trains."""
    from vlmtune.data.batching import TokenBudgetBatches

    lengths = _llava_like_lengths(102)
    one = TokenBudgetBatches(lengths, 1500, seed=0)
    ranks = [TokenBudgetBatches(lengths, 1500, seed=0, replicas=3, rank=r) for r in range(3)]
    assert all(len(batch) >= 3 for batch in one.batches) and ranks[0].batches == one.batches
    for epoch in range(2):
        for sampler in [one, *ranks]:
            sampler.set_epoch(epoch)
        for whole, *shares in zip(one, *ranks, strict=True):
            assert all(shares) and sorted(i for share in shares for i in share) == sorted(whole)
    # A sample too long to share a batch still gives every process a sample: its batch grows past the budget.
    assert all(len(batch) >= 3 for batch in TokenBudgetBatches([10, 10, 10, 900, 10], 1000, replicas=3).batches)
    with pytest.raises(ValueError, match="data.batch_tokens=0"):
        TokenBudgetBatches(lengths, 0)


def test_length_batches_follow_the_config(tmp_path):
    from datasets import Dataset

    from vlmtune.config import DataConfig
    from vlmtune.data.batching import length_batches

    measured = Dataset.from_dict({"id": ["a", "b", "c"], "length": [10, 300, 20]})
    assert length_batches(measured, DataConfig(), batch_size=2, seed=0) is None  # off by default
    assert length_batches(measured, DataConfig(group_by_length=True), batch_size=2, seed=0) is not None
    unmeasured = Dataset.from_dict({"id": ["a"], "length": [None]})
    with pytest.raises(ValueError, match="data.group_by_length=false"):
        length_batches(unmeasured, DataConfig(group_by_length=True), batch_size=2, seed=0)


def _train(pipeline, out, data: dict | None = None, **optim):
    """A few sft steps from the pipeline's pretrain checkpoint through vlmtune's trainer (`data` and `optim`: config
    fields); the trained adapter."""
    from peft import get_peft_model_state_dict

    from vlmtune.config import DataConfig, OptimConfig, TrainRecipeConfig
    from vlmtune.data.training import training_data
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.train.policy import apply_policy
    from vlmtune.train.sft import sft_trainer

    pad_to = optim.pop("pad_to_multiple_of", None)
    cfg = TrainRecipeConfig(run_dir=str(out), data=DataConfig(train=str(pipeline["data"]), **(data or {})),
                            resume="never",
                            optim=OptimConfig(max_steps=4, batch_size=4, **optim))
    model, processor = load_vlm(pipeline["pretrain"] / "checkpoint")
    torch.manual_seed(0)  # the same LoRA initialisation in every run
    model = apply_policy(model, cfg.policy, cfg.peft)
    trainer = sft_trainer(model, processor, training_data(cfg.data, processor, out).dataset, cfg, out,
                          report_to="none")
    if pad_to:  # the unoptimised compute: every batch padded far beyond its longest sample
        trainer.data_collator.collator.pad_to_multiple_of = pad_to
    trainer.train()
    return get_peft_model_state_dict(model)


def test_sft_speed_ups_train_the_weights_of_the_plain_path(pipeline, shapes, tmp_path):
    """Both speed-ups (token-budget batches, the supervised-only head) against the same batches through TRL's head on
    every position, padded to a multiple of 64 tokens: the same adapter after 4 steps."""
    pipeline = {**pipeline, "data": shapes / "train.json"}
    fast = _train(pipeline, tmp_path / "fast", data={"group_by_length": True})
    plain = _train(pipeline, tmp_path / "plain", supervised_head=False, pad_to_multiple_of=64,
                   data={"group_by_length": True})
    assert fast.keys() == plain.keys()
    for name, tensor in fast.items():
        torch.testing.assert_close(tensor, plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_dataloader_workers_train_the_weights_of_the_main_process(pipeline, shapes, tmp_path):
    """data.workers=2: images decoded and processed in two dataloader processes give the same batches, so the same
    adapter, as in the training process (the CPU default, 0)."""
    pipeline = {**pipeline, "data": shapes / "train.json"}
    workers = _train(pipeline, tmp_path / "workers", data={"workers": 2})
    main = _train(pipeline, tmp_path / "main", data={"workers": 0})
    for name, tensor in workers.items():
        torch.testing.assert_close(tensor, main[name], atol=1e-6, rtol=1e-5, msg=name)


def test_sft_vision_feature_cache_reads_every_image_of_later_epochs_and_trains_the_same(pipeline, tmp_path):
    from conftest import vlmtune

    common = [f"init_from={pipeline['pretrain'] / 'checkpoint'}", "data.max_train_samples=8", "optim.batch_size=4",
              "optim.epochs=2", "logger=none", "evaluate_at_end=false"]
    out = vlmtune("sft", f"run_dir={tmp_path / 'cached'}", f"vision_feature_cache={tmp_path / 'features'}", *common)
    assert "vision feature cache: 8 images read from disk, 8 encoded" in out
    vlmtune("sft", f"run_dir={tmp_path / 'plain'}", *common)
    cached, plain = (load_file(str(tmp_path / run / "checkpoint" / "adapter_model.safetensors"))
                     for run in ("cached", "plain"))
    for name, tensor in cached.items():
        torch.testing.assert_close(tensor, plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bench_runs_the_baseline_and_vlmtune_on_the_same_samples(cache, tmp_path):
    """`make bench` end to end at the smoke size (its figures mean nothing here): both paths train the same samples
    and supervised tokens, and the report has every figure."""
    from conftest import run_cli

    run_cli(sys.executable, "-m", "vlmtune.bench", "--size", "smoke", "--repeats", "1", "--only", "trl", "vlmtune",
            "--out", str(tmp_path))
    report = json.loads((tmp_path / "bench.json").read_text())
    trl, fast = report["summary"]["trl"], report["summary"]["vlmtune"]
    assert trl["supervised_tokens"] == fast["supervised_tokens"] > 0 and trl["samples"] == fast["samples"] == 12
    assert fast["vs_trl"]["median"] > 0 and fast["padding"]["median"] <= trl["padding"]["median"]
    assert "| vlmtune |" in (tmp_path / "bench.md").read_text()


def test_gpu_bench_runs_end_to_end_in_smoke_mode(cache, tmp_path):
    """`make bench-gpu`'s script on the CPU with tiny models of its architectures: every mode, both paths."""
    from conftest import run_cli

    run_cli(sys.executable, "-m", "vlmtune.bench.gpu", "--smoke", "--out", str(tmp_path))
    report = json.loads((tmp_path / "bench-gpu.json").read_text())
    assert set(report["results"]) == {"full", "lora", "qlora"} and report["smoke"]
    for paths in report["results"].values():
        [trl], [fast] = paths["trl"], paths["vlmtune"]
        assert trl["supervised"] == fast["supervised"] > 0 and trl["samples"] == fast["samples"]


def test_model_flops_count_weights_attention_and_the_frozen_tower(tiny, tmp_path):
    from vlmtune.bench.gpu import model_flops
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.compose import compose

    model, processor = compose(ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "clip")),
                                           llm=LLMConfig(path=str(tiny / "llm" / "llama"))))
    model.save_pretrained(tmp_path)
    text = model.config.text_config
    llm = model.model.language_model
    weights = sum(p.numel() for p in llm.parameters()) - llm.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    counts = {"tokens": 100, "squared_lengths": 5000, "samples": 2}
    expected = 6 * weights * 100 + 12 * text.num_hidden_layers * text.hidden_size * 5000 + 2 * vision * 9 * 2
    assert model_flops(tmp_path, counts, image_tokens=9) == expected
