"""Every command shown in the README and docs/ is run, so none goes stale: the walkthrough below runs here in order
(with a few steps), the commands that need hub checkpoints or data compose here, and the rest are run by the test
named for them. A documented command that is in none of these lists fails the first test."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import REPO, vlmtune

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# Run here, in this order, in one folder (each with FAST_ARGS added): the documented walkthrough.
WALKTHROUGH = [
    "vlmtune pretrain run_dir=runs/p1",
    "vlmtune sft init_from=runs/p1/checkpoint run_dir=runs/s1",
    "vlmtune sft init_from=runs/p1/checkpoint peft=qlora",
    "vlmtune evaluate checkpoint=runs/s1/checkpoint",
    "vlmtune quantize checkpoint=runs/s1/checkpoint run_dir=runs/q1",
    "vlmtune evaluate checkpoint=runs/q1/nf4",
    "vlmtune export checkpoint=runs/s1/checkpoint run_dir=runs/merged",
    "vlmtune evaluate checkpoint=runs/s1/checkpoint run_dir=runs/e1",
    "vlmtune export checkpoint=runs/s1/checkpoint results=runs/e1/results.json run_dir=runs/x1",
    'vlmtune chat checkpoint=runs/s1/checkpoint image=photo.png question="What color is the square?" '
    "answer.image_position=after",
    'vlmtune predict checkpoint=runs/s1/checkpoint input=photos/ question="What is in the image?"',
    "vlmtune predict checkpoint=runs/s1/checkpoint input=questions.jsonl run_dir=runs/answers",
    "vlmtune describe model/vision=tiny_clip peft=qlora",
    "vlmtune describe model/vision=tiny_dinov2_reg model.vision.select_strategy=patches model/llm=tiny_phi3 "
    "model/projector=pixel_shuffle",
    "vlmtune dpo init_from=runs/s1/checkpoint run_dir=runs/d1",
    "vlmtune data inspect data=shapes samples=3",
    "vlmtune data check data.train=my.jsonl data.max_length=2048",
]
FAST_ARGS = {"pretrain": ["optim.max_steps=2", "optim.batch_size=4", "logger=none"],
             "sft": ["optim.max_steps=2", "optim.batch_size=4", "logger=none", "eval.batch_size=16"],
             "dpo": ["optim.max_steps=2", "optim.batch_size=4", "logger=none", "eval.batch_size=16"],
             "evaluate": ["logger=none", "eval.batch_size=16"],
             "quantize": ["logger=none", "eval.batch_size=16", "latency_samples=2"],
             "export": ["logger=none"], "chat": ["answer.max_new_tokens=8"],
             "predict": ["answer.max_new_tokens=8", "batch_size=4"]}

# Need hub checkpoints or data that are not here: composed and validated (every key and value checked), not run.
COMPOSE_ONLY = [
    "vlmtune sft model/vision=siglip_so400m_p14_384 model/llm=llama3_1_8b model/projector=resampler",
    "vlmtune sft model=smolvlm_256m",
    "vlmtune sft model=hf_vlm model.path=/models/my-llava",
    "vlmtune evaluate checkpoint=runs/sft/20261128-120000/checkpoint",
    "vlmtune evaluate checkpoint=runs/s1/checkpoint eval/task=docvqa eval.task.limit=200",
    "vlmtune evaluate checkpoint=runs/s1/checkpoint eval/task=pope eval.task.dataset_path=data/pope.parquet",
    "vlmtune sft launcher=zero3 launcher.num_processes=8",
]

OPTUNA_TEST = ("tests/test_sweeps.py::"
               "test_optuna_sweep_maximises_accuracy_each_trial_in_its_own_directory_and_wandb_group")
SERVE_TEST = "tests/test_infer.py::test_serve_in_headless_chromium"
VARIANTS_TEST = "tests/test_quantize_variants.py::test_report_measures_every_variant"
# Run by other tests (or by CI and the demo themselves).
ELSEWHERE = {
    "make install": ".ci/run",
    "make demo": "vlmtune demo (the demo itself)",
    "make test": ".ci/run",
    "vlmtune tiny && vlmtune synth": "tests/conftest.py::cache (write_tiny_parts, write_shapes_dataset)",
    "accelerate launch --multi_gpu --num_processes 2 recipes/sft.py init_from=runs/p1/checkpoint":
        "tests/test_distributed.py::test_two_rank_sft_trains_into_one_run_directory_like_one_rank",
    "accelerate launch --multi_gpu --num_processes 2 recipes/evaluate.py checkpoint=runs/s1/checkpoint":
        "tests/test_distributed.py::test_two_and_three_rank_evaluation_equal_one_rank",
    "vlmtune sft -m optim.lr=1e-4,3e-4 peft.r=8,16 init_from=runs/p1/checkpoint":
        "tests/test_recipes.py::test_sweep_runs_each_job_in_its_own_directory_and_wandb_group",
    "vlmtune sft -m +experiment=tiny_lr_sweep": OPTUNA_TEST,
    "vlmtune sft -m +experiment=tiny_lr_sweep hydra.sweeper.n_trials=10 optim.max_steps=100 "
    "'hydra.sweeper.params.optim.lr=tag(log,interval(1e-4,1e-2))'": OPTUNA_TEST,
    "python -m lmms_eval --model vlmtune --model_args pretrained=runs/s1/checkpoint,batch_size=8 --tasks <task> "
    "--output_path runs/lmms --log_samples":
        "tests/test_lmms_eval.py::test_lmms_eval_scores_the_vlmtune_model_on_a_local_task (with lmms-eval installed)",
    "accelerate launch --multi_gpu --num_processes 2 -m lmms_eval --model vlmtune ...":
        "tests/test_lmms_eval.py (by hand on 2 processes; see docs/evaluation.md)",
    "VLMTUNE_DEBUG=1 vlmtune sft data.train=data/train.json":
        "tests/test_errors.py::test_vlmtune_debug_shows_the_traceback",
    "vlmtune pretrain launcher=zero3 launcher.num_processes=2":
        "tests/test_deepspeed.py::test_zero3_pretrain_and_dpo_equal_one_rank",
    "accelerate launch --config_file runs/sft/<stamp>/accelerate_config.yaml recipes/sft.py init_from=...":
        "tests/test_deepspeed.py (every launcher=zero* run writes that file and launches it this way)",
    "make bench": "tests/test_speed.py::test_bench_runs_the_baseline_and_vlmtune_on_the_same_samples (smoke size; "
                  "the figures in docs/benchmarks.md come from make bench itself)",
    "python -m vlmtune.bench --only trl vlmtune --repeats 5":
        "tests/test_speed.py::test_bench_runs_the_baseline_and_vlmtune_on_the_same_samples",
    "make bench-gpu": "tests/test_speed.py::test_gpu_bench_runs_end_to_end_in_smoke_mode (no GPU here)",
    "python -m vlmtune.bench.gpu --smoke": "tests/test_speed.py::test_gpu_bench_runs_end_to_end_in_smoke_mode",
    "vlmtune sft -m hydra/launcher=submitit_local optim.lr=1e-4,2e-4":
        "tests/test_launch.py::test_submitit_local_sweep_runs_each_trial_as_a_two_process_launch",
    "vlmtune sft -m hydra/launcher=slurm launcher=zero3 launcher.num_processes=16 launcher.num_machines=2 "
    "hydra.launcher.partition=gpu optim.lr=1e-4,2e-4":
        "tests/test_launch.py::test_slurm_launcher_sizes_each_trial_from_the_launcher_profile (no SLURM here)",
    # docs/inference.md: chat in a terminal, predict on 2 processes, serve in a browser (the one-shot chat and
    # predict on one process are in the walkthrough).
    "vlmtune chat checkpoint=runs/demo/<time>/sft/checkpoint image=~/.cache/vlmtune/data/shapes/images/test_00000.png "
    "answer.image_position=after": "tests/test_infer.py::test_chat_in_a_pseudo_terminal",
    "accelerate launch --multi_gpu --num_processes 2 recipes/predict.py checkpoint=runs/s1/checkpoint input=photos/ "
    'question="What is in the image?"': "tests/test_infer.py::test_predict_folder_on_two_processes_reports_a_bad_image",
    'pip install -e ".[serve]"': ".ci/run (make install installs the serve extra)",
    "vlmtune serve runs=runs/demo/<time> answer.image_position=after": SERVE_TEST,
    "vlmtune serve runs=runs/demo/<time> answer.image_position=after port=7860 &": SERVE_TEST,
    ".venv/bin/python tests/serve_browser.py http://127.0.0.1:7860 ~/.cache/vlmtune/data/shapes/images/test_00000.png "
    '"What color is the square?" docs/img/serve.png sft/checkpoint': SERVE_TEST,
    # docs/quantization.md: every variant, on the tests' sft adapter (group_size=32, calibration_samples=4).
    "vlmtune quantize checkpoint=runs/s1/checkpoint variants=[int8,nf4,fp4,quanto_int8,quanto_int4] run_dir=runs/q2":
        VARIANTS_TEST,
    "PYTHONPATH=.extras/torchao vlmtune quantize checkpoint=runs/s1/checkpoint "
    "variants=[torchao_int8,torchao_int8_dynamic]": VARIANTS_TEST,
    "vlmtune quantize checkpoint=runs/s1/checkpoint variants=[awq_int4] group_size=32 calibration_samples=64":
        VARIANTS_TEST,
    "PYTHONPATH=.extras/torchao vlmtune quantize checkpoint=runs/demo/<time>/sft/checkpoint group_size=32 "
    "variants=[int8,nf4,fp4,torchao_int8,torchao_int8_dynamic,quanto_int8,quanto_int4,awq_int4]": VARIANTS_TEST,
    # docs/serving.md: vLLM is not installed here and needs a GPU.
    "pip install vllm": "(needs a GPU; not run)",
    "vllm serve runs/x1/checkpoint --served-model-name my-vlm --max-model-len 4096": "(needs a GPU; not run)",
    "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"my-vlm\", "
    '"temperature": 0, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": '
    '"data:image/png;base64,\'"$(base64 -w0 image.png)"\'"}}, {"type": "text", "text": '
    '"What color is the square?"}]}]}\'':
        "(asks the vLLM server above; needs a GPU; not run)",
}


def documented_commands() -> dict[str, str]:
    """command -> the file that shows it: the lines of ```bash blocks (continuations joined, comments dropped)."""
    commands = {}
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command and not command.startswith("#"):
                    commands[re.sub(r"\s+", " ", command)] = doc.name
    return commands


# docs/roadmap.md, the guided tour: tests/test_roadmap.py runs each of its `vlmtune` commands in order, as written
# (conftest.road, with fast overrides after them).
ROADMAP_TEST = "tests/test_roadmap.py::test_each_step_leaves_its_number"
ELSEWHERE.update({command: ROADMAP_TEST for command, doc in documented_commands().items()
                  if doc == "roadmap.md" and command.startswith("vlmtune ")})


def test_every_documented_command_is_run_somewhere():
    known = {*WALKTHROUGH, *COMPOSE_ONLY, *ELSEWHERE}
    unknown = {command: doc for command, doc in documented_commands().items() if command not in known}
    assert not unknown, f"documented commands that no test runs: {unknown}"
    for where in ELSEWHERE.values():
        test = re.match(r"(tests/\w+\.py)(?:::(\w+))?", where)
        if test:
            assert (REPO / test[1]).exists() and (not test[2] or f"def {test[2]}(" in (REPO / test[1]).read_text()), \
                where


@pytest.mark.parametrize("command", COMPOSE_ONLY)
def test_documented_commands_that_need_the_hub_compose(cache, command):
    from hydra import compose, initialize_config_dir

    from vlmtune.hydra_setup import setup
    from vlmtune.runs import validated

    recipe, *overrides = shlex.split(command)[1:]
    setup()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name=recipe, overrides=[*overrides, "run_dir=unused"])
    validated(cfg)


def test_the_documented_walkthrough_runs(cache, shapes, tmp_path):
    import json

    # `data check data.train=my.jsonl`: a file of the user's own, here a few of the shapes samples as JSONL.
    samples = json.loads((shapes / "train.json").read_text())[:8]
    for sample in samples:
        sample["image"] = str(shapes / sample["image"])
    (tmp_path / "my.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    # chat and predict: an image, a folder of images, a file of questions about them (vqa records).
    shutil.copy(samples[0]["image"], tmp_path / "photo.png")
    (tmp_path / "photos").mkdir()
    for sample in samples[:3]:
        shutil.copy(sample["image"], tmp_path / "photos")
    (tmp_path / "questions.jsonl").write_text("".join(
        json.dumps({"id": s["id"], "image": s["image"], "question": "What color is the square?"}) + "\n"
        for s in samples[:3]))
    for command in WALKTHROUGH:
        args = shlex.split(command)[1:]
        output = vlmtune(*args, *FAST_ARGS.get(args[0], []), cwd=tmp_path)
        assert "error:" not in output, (command, output[-2000:])
    assert (tmp_path / "runs" / "d1" / "checkpoint" / "adapter_config.json").exists()
    assert (tmp_path / "runs" / "merged" / "checkpoint" / "config.json").exists()
    assert Path(tmp_path / "runs" / "q1" / "nf4" / "config.json").exists()
    assert "## Evaluation" in (tmp_path / "runs" / "x1" / "checkpoint" / "README.md").read_text()
    answers = [json.loads(line) for line in (tmp_path / "runs" / "answers" / "predictions.jsonl").open()]
    assert [a["id"] for a in answers] == [s["id"] for s in samples[:3]]
