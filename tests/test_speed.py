"""The speed-ups keep the plain path's loss: the LM head on supervised positions only, length-sorted micro-batches,
length-grouped batches, the vision feature cache in sft; and the benchmarks run end to end (their figures come from
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


def _examples(tmp_path):
    """Samples of very different lengths: multi-turn with two images, one image, text only, a long answer (a
    dataset)."""
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
    return to_dataset(read_samples(tmp_path / "d.json"))


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
    examples = list(_examples(tmp_path))
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


def test_length_grouped_batches_visit_each_sample_once_per_epoch_with_little_padding():
    from vlmtune.data.batching import LengthGroupedBatches

    lengths = _llava_like_lengths(300)
    batches = LengthGroupedBatches(lengths, 8, seed=3)
    epochs = []
    for epoch in range(2):
        batches.set_epoch(epoch)
        epochs.append(list(batches))
        assert sorted(i for batch in epochs[-1] for i in batch) == list(range(300))  # every sample, once
        assert len(epochs[-1]) == len(batches) == 38  # the plain path's steps of 8 samples: its schedule
        assert sorted(len(b) for b in epochs[-1]) == [4] + [8] * 37
    # Drawn anew: most samples that shared a batch in one epoch are apart in the next (none tied for the whole run).
    pairs = [{(i, j) for batch in epoch for i in batch for j in batch if i < j} for epoch in epochs]
    assert len(pairs[0] & pairs[1]) < len(pairs[0]) / 2
    batches.set_epoch(1)
    assert list(batches) == epochs[1]  # an epoch replays exactly (resume)
    rng = random.Random(0)
    order = rng.sample(range(300), 300)
    random_slots = sum(8 * max(lengths[i] for i in order[k:k + 8]) for k in range(0, 300, 8))
    assert 1 - sum(lengths) / random_slots > 0.25 > 0.08 > batches.padding(0)
    assert LengthGroupedBatches(lengths, 8, seed=3, group=1).padding(0) > 0.25  # groups of one batch: random
    with pytest.raises(ValueError, match="data.length_group=0"):
        LengthGroupedBatches(lengths, 8, group=0)


def test_length_grouped_batches_over_processes_give_each_step_the_one_process_batch():
    """Each process takes every n-th sample of the same global batch: the batches one process with the global batch
    size trains; a last batch too small to give every process a sample joins the one before it."""
    from vlmtune.data.batching import LengthGroupedBatches

    lengths = _llava_like_lengths(103)  # 103 = 8 x 12 + 7: a short last batch
    one = LengthGroupedBatches(lengths, 12, seed=0)
    ranks = [LengthGroupedBatches(lengths, 4, seed=0, replicas=3, rank=r) for r in range(3)]
    for epoch in range(2):
        for sampler in [one, *ranks]:
            sampler.set_epoch(epoch)
        steps = list(zip(one, *ranks, strict=True))
        assert len(steps) == len(one) == len(ranks[0]) == 9
        for whole, *shares in steps:
            assert all(shares) and sorted(i for share in shares for i in share) == sorted(whole)
    lonely = LengthGroupedBatches(lengths[:25], 4, replicas=3)  # 25 = 2 x 12 + 1: one sample cannot be shared
    assert len(lonely) == len(list(lonely)) == 2 and sum(len(b) for b in lonely.batches(0)) == 25
    with pytest.raises(ValueError, match="cannot give each of 3 processes one"):
        LengthGroupedBatches(lengths[:2], 1, replicas=3)


def test_length_batches_follow_the_config(tmp_path):
    from datasets import Dataset

    from vlmtune.config import DataConfig
    from vlmtune.data.batching import length_batches

    measured = Dataset.from_dict({"id": ["a", "b", "c"], "length": [10, 300, 20]})
    assert length_batches(measured, DataConfig(), batch_size=2, seed=0) is None  # off by default
    grouped = length_batches(measured, DataConfig(group_by_length=True, length_group=4), batch_size=2, seed=0)
    assert grouped.group == 4 and len(grouped) == 2
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


def test_sft_speed_ups_train_the_weights_of_the_plain_path(pipeline, shapes, tmp_path, monkeypatch):
    """The defaults (length-sorted micro-batches, the supervised-only head) against the same batches whole, through
    TRL's head on every position, padded to a multiple of 64 tokens: the same adapter after 4 steps."""
    from vlmtune.train import microbatches

    pipeline = {**pipeline, "data": shapes / "train.json"}
    splits = []
    split_batch = microbatches.split_batch
    monkeypatch.setattr(microbatches, "split_batch", lambda inputs, groups: splits.append(groups) or
                        split_batch(inputs, groups))
    # The shapes' samples differ by a few tokens, not worth a piece of their own: with no cost per piece every
    # sample is one, the most a batch can be cut.
    monkeypatch.setattr(microbatches, "OVERHEAD_TOKENS", 0)
    fast = _train(pipeline, tmp_path / "fast")
    assert len(splits) == 4 and all(len(groups) > 1 for groups in splits)  # every step ran in pieces
    plain = _train(pipeline, tmp_path / "plain", supervised_head=False, microbatch_by_length=False,
                   pad_to_multiple_of=64)
    assert len(splits) == 4
    assert fast.keys() == plain.keys()
    for name, tensor in fast.items():
        torch.testing.assert_close(tensor, plain[name], atol=1e-5, rtol=1e-4, msg=name)
    grouped = _train(pipeline, tmp_path / "grouped", data={"group_by_length": True})  # length-grouped batches too
    grouped_plain = _train(pipeline, tmp_path / "grouped-plain", data={"group_by_length": True},
                           supervised_head=False, microbatch_by_length=False, pad_to_multiple_of=64)
    for name, tensor in grouped.items():
        torch.testing.assert_close(tensor, grouped_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def _one_image_batch(processor, lengths: list[int]) -> dict:
    """A TRL-collated batch of one-image conversations whose answers have the given numbers of words."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    images = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green", "white", "black")]
    examples = [{"images": [images[i % 5]], "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": " ".join(["shape"] * n)}]}]}
        for i, n in enumerate(lengths)]
    return DataCollatorForVisionLanguageModeling(processor)(examples)


def test_length_microbatches_give_the_whole_batch_loss_and_gradients(model_and_processor, tmp_path):
    """One training step on a batch of very different lengths, split into length-sorted micro-batches: the loss the
    step reports and every gradient equal the whole batch's; batches it cannot split (several images in a sample,
    left padding) train whole."""
    from vlmtune.config import OptimConfig, TrainRecipeConfig
    from vlmtune.train.microbatches import _rows_per_sample, image_token_id, length_cut
    from vlmtune.train.sft import sft_trainer

    model, processor = model_and_processor
    inputs = _one_image_batch(processor, [2, 60, 5, 30, 1, 90])
    assert _rows_per_sample(inputs, image_token_id(model))
    assert len(length_cut(inputs["attention_mask"].sum(1).tolist())) > 1
    count = int((inputs["labels"][:, 1:] != -100).sum())
    results = {}
    for split in (True, False):
        cfg = TrainRecipeConfig(run_dir=str(tmp_path), resume="never",
                                optim=OptimConfig(microbatch_by_length=split, max_steps=1))
        trainer = sft_trainer(model, processor, _examples(tmp_path), cfg, tmp_path, report_to="none")
        model.zero_grad()
        loss = trainer.training_step(trainer.model, dict(inputs), num_items_in_batch=count)
        results[split] = loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    (loss, grads), (whole_loss, whole_grads) = results[True], results[False]
    torch.testing.assert_close(loss, whole_loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == whole_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, whole_grads[name], atol=1e-6, rtol=1e-4, msg=name)

    two_images = {**inputs, "pixel_values": torch.cat([inputs["pixel_values"]] * 2)}
    left = {**inputs, "attention_mask": inputs["attention_mask"].flip(1)}
    assert not _rows_per_sample(two_images, image_token_id(model)) and not _rows_per_sample(left, image_token_id(model))


def test_length_cut_minimises_padded_slots_plus_a_cost_per_piece():
    from vlmtune.train.microbatches import length_cut

    lengths = [65, 70, 450, 120, 90, 300, 66, 200]
    assert length_cut(lengths, overhead=10**6) == [sorted(range(8), key=lengths.__getitem__)]  # one piece
    assert [len(g) for g in length_cut(lengths, overhead=0)] == [1] * 8  # no cost: one sample per piece
    pieces = length_cut(lengths, parts=3)
    assert sorted(i for g in pieces for i in g) == list(range(8)) and len(pieces) == 3
    assert [[lengths[i] for i in g] for g in pieces] == [[65, 66, 70, 90, 120], [200, 300], [450]]


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
