"""Evaluation tasks as configs (conf/eval/task/*.yaml): every config composes, every benchmark runs end to end on a
tiny local fixture in its dataset's column layout, and the reported numbers are the metric functions applied to the
saved predictions."""

from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO

from vlmtune.data.errors import DataError
from vlmtune.errors import ConfigError
from vlmtune.eval import metrics as m
from vlmtune.eval.scoring import score_rows
from vlmtune.eval.tasks import task_records
from vlmtune.tiny import IMAGE_SIZE

TASKS = sorted(p.stem for p in (REPO / "conf" / "eval" / "task").glob("*.yaml"))
COLORS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange"]


def compose_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from vlmtune.hydra_setup import setup

    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=["checkpoint=unused", "run_dir=unused", "logger=none", *overrides])


def typed_task(name: str, *overrides: str):
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_cfg(f"eval/task={name}", *overrides)).eval.task


def image(i: int):
    from PIL import Image

    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLORS[i % len(COLORS)])


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    image(i).save(buffer, format="PNG")
    return buffer.getvalue()


def to_parquet(rows: list[dict], path: Path, image_columns: tuple[str, ...] = ("image",)) -> Path:
    """A parquet file as `datasets` writes lmms-lab's: image columns as {"bytes", "path"} with HF features."""
    from datasets import Dataset, Image

    dataset = Dataset.from_list(rows)
    for column in image_columns:
        dataset = dataset.cast_column(column, Image())
    dataset.to_parquet(str(path))
    return path


def to_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- fixtures in each benchmark's column layout (a few docs each) --------------------------------------------------


def vqav2(d: Path) -> tuple[Path, list[str]]:
    answers = [["two"] * 8 + ["2", "three"], ["yes"] * 3 + ["no"] * 7, ["red"] * 10]
    rows = [{"question_id": 100 + i, "question": f"Question {i}?", "image": png(i), "question_type": "what",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(ans)]}
            for i, ans in enumerate(answers)]
    return to_parquet(rows, d / "vqav2.parquet"), []


def gqa(d: Path) -> tuple[Path, list[str]]:
    to_parquet([{"id": f"n{i}", "image": png(i)} for i in range(3)], d / "gqa_images.parquet")
    rows = [{"id": f"q{i}", "imageId": f"n{2 - i}", "question": f"Is it {c}?", "answer": c, "fullAnswer": c}
            for i, c in enumerate(["table", "yes", "left"])]
    return to_jsonl(rows, d / "gqa.jsonl"), [f"eval.task.images_table.dataset_path={d / 'gqa_images.parquet'}"]


def textvqa(d: Path) -> tuple[Path, list[str]]:
    (d / "textvqa_images").mkdir()
    for i in range(3):
        image(i).save(d / "textvqa_images" / f"{i}.jpg")
    rows = [{"question_id": i, "image_id": str(i), "question": f"what does sign {i} say?",
             "image": f"textvqa_images/{i}.jpg", "answers": ["stop"] * 6 + ["halt"] * 4} for i in range(3)]
    return to_jsonl(rows, d / "textvqa.jsonl"), []


def docvqa(d: Path) -> tuple[Path, list[str]]:
    rows = [{"questionId": 50 + i, "question": f"What is the date {i}?", "image": png(i),
             "answers": [f"1{i} May", f"May 1{i}"], "docId": 7} for i in range(3)]
    return to_parquet(rows, d / "docvqa.parquet"), []


def chartqa(d: Path) -> tuple[Path, list[str]]:
    rows = [{"type": t, "question": f"What is bar {i}?", "answer": a, "image": png(i)}
            for i, (t, a) in enumerate([("human_test", "12"), ("augmented_test", "45%"), ("human_test", "Yes")])]
    return to_parquet(rows, d / "chartqa.parquet"), []


def scienceqa_img(d: Path) -> tuple[Path, list[str]]:
    rows = [{"image": png(i), "question": f"Which is {i}?", "choices": ["cat", "dog", "fish"][: 2 + i % 2],
             "answer": i % 2, "hint": "" if i == 0 else f"Hint {i}.", "subject": "natural science"}
            for i in range(3)]
    return to_parquet(rows, d / "scienceqa.parquet"), []


def pope(d: Path) -> tuple[Path, list[str]]:
    rows = [{"id": str(i), "question_id": str(i), "question": f"Is there a {c} in the image?", "answer": a,
             "image_source": "coco", "image": png(i), "category": cat}
            for i, (c, a, cat) in enumerate([("dog", "yes", "random"), ("cat", "no", "random"),
                                             ("car", "yes", "adversarial"), ("cup", "no", "adversarial")])]
    return to_parquet(rows, d / "pope.parquet"), []


def mmbench(d: Path) -> tuple[Path, list[str]]:
    """VLMEvalKit-style rows: base64 images, rotated circular copies at index + 1e6, empty option cells."""
    b64 = base64.b64encode(png(0)).decode()
    rows = [
        {"index": 0, "question": "Which animal?", "hint": "A farm.", "A": "cow", "B": "cat", "C": "dog", "D": None,
         "answer": "A", "category": "recognition", "image": b64},
        {"index": 1000000, "question": "Which animal?", "hint": "A farm.", "A": "cat", "B": "dog", "C": "cow",
         "D": None, "answer": "C", "category": "recognition", "image": b64},
        {"index": 1, "question": "How many?", "hint": "nan", "A": "one", "B": "two", "C": None, "D": None,
         "answer": "B", "category": "counting", "image": b64},
        {"index": 1000001, "question": "How many?", "hint": "nan", "A": "two", "B": "one", "C": None, "D": None,
         "answer": "A", "category": "counting", "image": b64},
    ]
    return to_jsonl(rows, d / "mmbench.jsonl"), []


def mmmu(d: Path) -> tuple[Path, list[str]]:
    columns = [f"image_{i}" for i in range(1, 8)]
    base = dict.fromkeys(columns)
    rows = [
        {**base, "id": "validation_Art_1", "question": "Which painting is <image 1>?", "image_1": png(0),
         "options": "['Mona Lisa', 'The Scream', 'Starry Night']", "answer": "B", "question_type": "multiple-choice"},
        {**base, "id": "validation_Math_2", "question": "Compare <image 1> and <image 2>: how many sides?",
         "image_1": png(1), "image_2": png(2), "options": "[]", "answer": "3.5", "question_type": "open"},
        {**base, "id": "validation_Math_3", "question": "Which graph?", "image_1": png(3),
         "options": "['<image 1>', 'none']", "answer": "A", "question_type": "multiple-choice"},
    ]
    return to_parquet(rows, d / "mmmu.parquet", tuple(columns)), []


def coco_caption(d: Path) -> tuple[Path, list[str]]:
    """A datasets folder with a `val` split, as save_to_disk writes it."""
    from datasets import Dataset, DatasetDict, Image

    refs = [["a red square on a table", "a red box", "red square"], ["a green field", "green grass in a park"],
            ["a blue sky", "the blue sky above", "clear blue sky"]]
    rows = [{"question_id": f"{i:012d}.jpg", "id": i, "image": png(i), "question": "", "answer": r}
            for i, r in enumerate(refs)]
    DatasetDict({"val": Dataset.from_list(rows).cast_column("image", Image())}).save_to_disk(str(d / "coco"))
    return d / "coco", []


FIXTURES = {f.__name__: f for f in [vqav2, gqa, textvqa, docvqa, chartqa, scienceqa_img, pope, mmbench, mmmu,
                                    coco_caption]}


def oracle(record: dict) -> str:
    """The prediction a perfect model would give: the consensus answer, the right letter, the first caption."""
    target = record["target"]
    return target if isinstance(target, str) else Counter(target).most_common(1)[0][0]


def expected_metrics(task: str, rows: list[dict]) -> dict[str, float]:
    """The task's numbers recomputed from predictions.jsonl with the metric functions alone."""
    preds = [r["prediction"] for r in rows]

    def mean(values) -> float:
        return math.fsum(values) / len(values)

    if task in ("vqav2", "textvqa"):
        return {"vqa_accuracy": mean([m.vqa_accuracy(r["prediction"], r["target"]) for r in rows])}
    if task == "docvqa":
        return {"anls": mean([m.anls(r["prediction"], r["target"]) for r in rows])}
    if task == "gqa":
        return {"gqa_exact_match": mean([m.gqa_exact_match(r["prediction"], r["target"]) for r in rows])}
    if task == "chartqa":
        human = [m.relaxed_accuracy(r["prediction"], [r["target"]]) for r in rows if r["kind"] == "human_test"]
        return {"relaxed_accuracy": mean([m.relaxed_accuracy(r["prediction"], [r["target"]]) for r in rows]),
                "relaxed_accuracy/human_test": mean(human)}
    if task == "scienceqa_img":
        return {"scienceqa_match": mean([m.scienceqa_match(r["prediction"], r["target"]) for r in rows])}
    if task == "pope":
        full = m.pope_metrics(preds, [r["target"] for r in rows])
        split = m.pope_metrics(preds[:2], [r["target"] for r in rows[:2]])
        return {"f1": full["f1"], "accuracy": full["accuracy"], "yes_ratio": full["yes_ratio"],
                "f1/random": split["f1"]}
    if task == "mmbench":
        groups = m.mmbench_groups([(int(r["id"]), r["prediction"], r["target"], r["choices"]) for r in rows])
        return {"circular_accuracy": m.mmbench_circular(groups), "circular_accuracy_vanilla": m.mmbench_vanilla(groups)}
    if task == "mmmu":
        def correct(r):
            if r["choices"]:
                return float(m.extract_choice_mmmu(r["prediction"], r["choices"]) == r["target"])
            return float(m.mmmu_open_correct(r["target"], m.mmmu_open_parse(r["prediction"])))
        return {"accuracy": mean([correct(r) for r in rows]), "accuracy/Art": correct(rows[0]),
                "accuracy/Art_and_Design": correct(rows[0]), "accuracy/Science": mean([correct(r) for r in rows[1:]])}
    if task == "coco_caption":
        return m.caption_scores({r["id"]: r["prediction"] for r in rows}, {r["id"]: r["target"] for r in rows})
    raise AssertionError(task)


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_every_task_config_composes_and_validates(name):
    from vlmtune.eval.scoring import check_metric_list

    task = typed_task(name)
    assert task.task == name
    check_metric_list(task)
    # synthetic and retrieval read data.test (retrieval: tests/test_retrieval.py, tests/test_contrastive.py).
    assert name in ("synthetic", "retrieval") or name in FIXTURES, f"task {name} needs a fixture in this file"


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_oracle_predictions_score_perfectly(name, tmp_path):
    source, overrides = FIXTURES[name](tmp_path)
    task = typed_task(name, f"eval.task.dataset_path={source}", *overrides)
    records = task_records(task)
    rows = [{**r, "prediction": oracle(r)} for r in records]
    metrics = score_rows(task, rows)
    assert metrics["n"] == len(records)
    if name == "coco_caption":  # a caption equal to one reference: BLEU 1 (up to upstream's smoothing), ROUGE-L 1
        assert all(metrics[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6) for n in range(1, 5))
        assert metrics["ROUGE_L"] == pytest.approx(1.0)
        wrong = score_rows(task, [{**r, "prediction": "nothing here at all"} for r in records])
        assert metrics["CIDEr"] > wrong["CIDEr"]
        return
    assert all(r["score"] == 1.0 for r in rows), [(r["id"], r["prediction"], r["score"]) for r in rows]
    headline = {"pope": ["accuracy", "f1"], "mmbench": ["circular_accuracy"], "mmmu": ["accuracy"]}
    for key in headline.get(name, [task.metric_list[0].name or task.metric_list[0].metric]):
        assert metrics[key] == 1.0, (key, metrics)


def test_prompts_follow_the_benchmarks(tmp_path):
    """The rendered questions of EVAL_SPEC section 4 (ScienceQA, MMBench, MMMU) and image placement."""
    source, _ = scienceqa_img(tmp_path)
    sqa = task_records(typed_task("scienceqa_img", f"eval.task.dataset_path={source}"))
    assert sqa[1]["messages"][0]["content"][-1]["text"] == (
        "\nContext: Hint 1.\nWhich is 1?\nA. cat\nB. dog\nC. fish\n"
        "Answer with the option's letter from the given choices directly.")
    assert sqa[0]["messages"][0]["content"][-1]["text"].startswith("\nWhich is 0?\nA. cat\nB. dog\nAnswer")
    assert [r["target"] for r in sqa] == ["A", "B", "A"]
    source, _ = mmbench(tmp_path)
    mmb = task_records(typed_task("mmbench", f"eval.task.dataset_path={source}"))
    assert mmb[0]["messages"][0]["content"][-1]["text"] == (
        "\nA farm. Which animal? There are several options:\nA. cow\nB. cat\nC. dog\n"
        "Answer with the option's letter from the given choices directly.")
    assert mmb[2]["choices"] == {"A": "one", "B": "two"} and "nan" not in mmb[2]["messages"][0]["content"][-1]["text"]
    source, _ = mmmu(tmp_path)
    mu = task_records(typed_task("mmmu", f"eval.task.dataset_path={source}"))
    parts = mu[1]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"] and len(mu[1]["images"]) == 2
    assert parts[-1]["text"].endswith("sides?\n\nAnswer the question using a single word or phrase.")
    assert mu[0]["messages"][0]["content"][-1]["text"] == (
        "?\nA. Mona Lisa\nB. The Scream\nC. Starry Night\n\n"
        "Answer with the option's letter from the given choices directly.")
    assert [p["type"] for p in mu[2]["messages"][0]["content"]] == ["text", "image", "text"]  # tag in an option


def test_limit_takes_the_first_docs(tmp_path):
    source, _ = pope(tmp_path)
    records = task_records(typed_task("pope", f"eval.task.dataset_path={source}", "eval.task.limit=2"))
    assert [r["id"] for r in records] == ["0", "1"]


def test_mmbench_circular_groups_rotated_copies(tmp_path):
    source, _ = mmbench(tmp_path)
    task = typed_task("mmbench", f"eval.task.dataset_path={source}")
    records = task_records(task)
    # Question 0 right in both rotations; question 1 right only in its first: circular 1/2, vanilla 3/4.
    answers = {"0": "A", "1000000": "C", "1": "B", "1000001": "B"}
    rows = [{**r, "prediction": answers[r["id"]]} for r in records]
    metrics = score_rows(task, rows)
    assert metrics["circular_accuracy"] == 0.5 and metrics["circular_accuracy_vanilla"] == 0.75
    assert metrics["circular_accuracy/recognition"] == 1.0 and metrics["circular_accuracy/counting"] == 0.0
    assert metrics["n_unparsed"] == 0


def test_pope_aggregates_per_split_and_overall(tmp_path):
    source, _ = pope(tmp_path)
    task = typed_task("pope", f"eval.task.dataset_path={source}")
    records = task_records(task)
    preds = ["Yes, there is.", "No.", "no", "yes"]  # random: all right; adversarial: a miss and a false alarm
    metrics = score_rows(task, [{**r, "prediction": p} for r, p in zip(records, preds, strict=True)])
    full = m.pope_metrics(preds, ["yes", "no", "yes", "no"])
    assert {k: metrics[k] for k in ("accuracy", "precision", "recall", "f1")} == {
        k: full[k] for k in ("accuracy", "precision", "recall", "f1")}
    assert metrics["f1/random"] == 1.0 and metrics["accuracy/adversarial"] == 0.0
    assert metrics["mean_accuracy"] == 0.5 and metrics["mean_f1"] == pytest.approx((1.0 + 0.0) / 2)


def test_bad_input_names_task_source_and_column(tmp_path):
    source, _ = docvqa(tmp_path)
    with pytest.raises(DataError, match=r"task docvqa: .*docvqa.parquet has no column 'answer'.*doc_to_target"):
        task_records(typed_task("docvqa", f"eval.task.dataset_path={source}", "eval.task.doc_to_target=answer"))
    with pytest.raises(DataError, match=r"task vqav2: data file /nowhere/x.parquet does not exist"):
        task_records(typed_task("vqav2", "eval.task.dataset_path=/nowhere/x.parquet"))
    with pytest.raises(DataError, match="share the id"):
        task_records(typed_task("docvqa", f"eval.task.dataset_path={source}", "eval.task.doc_id=docId"))
    source, _ = textvqa(tmp_path)
    (tmp_path / "textvqa_images" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"task textvqa: .*row 1, column 'image'.*does not exist"):
        task_records(typed_task("textvqa", f"eval.task.dataset_path={source}"))
    with pytest.raises(ConfigError, match="valid values: .*anls.*vqa_accuracy"):
        score_rows(typed_task("docvqa", "eval.task.metric_list=[{metric: anls_score}]"), [])


@pytest.fixture(scope="module")
def checkpoint(tiny, tmp_path_factory):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.checkpoint import save_checkpoint
    from vlmtune.model.compose import compose

    cfg = ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full",
                                          feature_layer=-1), llm=LLMConfig(path=str(tiny / "llm" / "llama")))
    return save_checkpoint(*compose(cfg), tmp_path_factory.mktemp("eval-tasks") / "ckpt", {"recipe": "test"})


def evaluate(out: Path, checkpoint: Path, *overrides: str) -> tuple[dict, list[dict], dict]:
    """The evaluate recipe's body in this process: (metrics, predictions.jsonl rows, results.json)."""
    from vlmtune.eval.run import evaluate_checkpoint
    from vlmtune.runs import start_run

    run = start_run(compose_cfg(f"run_dir={out}", f"checkpoint={checkpoint}", *overrides), "evaluate")
    metrics = evaluate_checkpoint(run, checkpoint)
    run.finish()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return metrics, rows, json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_task_end_to_end_scores_equal_the_metrics_on_saved_predictions(name, checkpoint, tmp_path):
    source, overrides = FIXTURES[name](tmp_path)
    metrics, rows, results = evaluate(tmp_path / "run", checkpoint, f"eval/task={name}",
                                      f"eval.task.dataset_path={source}", *overrides, "eval.batch_size=2",
                                      "eval.task.generation_kwargs.max_new_tokens=3")
    assert results["task"] == name and results["data"]["path"] == str(source)
    assert results["generation"]["max_new_tokens"] == 3 and results["metrics"] == metrics
    assert "transformers" in results["versions"]
    assert len(rows) == metrics["n"] and all({"prompt", "prediction", "target", "score"} <= set(r) for r in rows)
    expected = expected_metrics(name, rows)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    if name == "coco_caption":  # per-image CIDEr-D in the rows; its mean is the corpus CIDEr-D
        assert math.fsum(r["score"] for r in rows) / len(rows) == pytest.approx(metrics["CIDEr"])
    json.dumps(rows)  # images from bytes / PIL columns are saved as references, not data


def test_synthetic_task_reproduces_the_exact_match_accuracy(checkpoint, shapes, tmp_path):
    """The default task scores data.test as evaluation always did: exact match after lower-casing and stripping a
    trailing full stop, overall and per question kind."""
    metrics, rows, results = evaluate(tmp_path, checkpoint, "eval.max_new_tokens=4")
    assert results["task"] == "synthetic" and results["data"]["path"] == str(shapes / "test.json")

    def norm(answer: str) -> str:
        return answer.strip().lower().rstrip(".").strip()

    scores = [float(norm(r["prediction"]) == norm(r["target"])) for r in rows]
    expected = {"accuracy": sum(scores) / len(rows), "n": len(rows)}
    for kind in sorted({r["kind"] for r in rows}):
        chosen = [s for s, r in zip(scores, rows, strict=True) if r["kind"] == kind]
        expected[f"accuracy/{kind}"] = sum(chosen) / len(chosen)
    assert metrics == expected and [r["score"] for r in rows] == scores
    assert len(rows) == len(json.loads((shapes / "test.json").read_text()))


def test_mmbench_on_three_processes_scores_as_on_one(checkpoint, tmp_path):
    """4 docs over 3 ranks (2 + 1 + 1), rotated circular copies on different ranks: gathered and aggregated once, the
    predictions and the circular score equal one process's."""
    from conftest import run_cli
    from test_distributed import launch

    source, _ = FIXTURES["mmbench"](tmp_path)
    overrides = ["eval/task=mmbench", f"eval.task.dataset_path={source}", "eval.batch_size=2", "logger=none",
                 "eval.task.generation_kwargs.max_new_tokens=3"]
    metrics, rows, _ = evaluate(tmp_path / "one", checkpoint, *overrides)
    run_cli(*launch(3), "recipes/evaluate.py", f"run_dir={tmp_path / 'three'}", f"checkpoint={checkpoint}",
            *overrides)
    results = json.loads((tmp_path / "three" / "results.json").read_text())
    assert results["num_processes"] == 3 and results["metrics"] == metrics
    assert [json.loads(line) for line in (tmp_path / "three" / "predictions.jsonl").read_text().splitlines()] == rows
