"""`vlmtune demo`: the whole road offline on a CPU, as a user would type it, then one results table.

tiny parts + synthetic data -> contrastive pretraining of the tiny CLIP tower -> pretrain (projector alignment) ->
sft (instruction tuning, evaluated at its end) -> quantize; beside it the same pretrain -> sft on the random tower
(what the contrastive stage buys) and on blank images (the blind baseline: what the text alone gives away).
Each stage is a separate `vlmtune <recipe>` process writing its own run directory; independent stages run side by
side (two at a time), one thread each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# The demo's experiment settings; everything else is the recipes' defaults.
DEMO = ["logger=none"]
# The tiny CLIP tower, read after its last layer with the CLS token kept: CLS is what the contrastive loss trains.
TOWER = ["model/vision=tiny_clip", "model.vision.feature_layer=-1", "model.vision.select_strategy=full"]
# NegCLIP's swapped captions as hard negatives: in-batch negatives rarely differ from a caption only in order.
CONTRASTIVE = ["negatives=swap", "optim.max_steps=300"]
PRETRAIN = ["optim.max_steps=100"]
# Five epochs at 1.2e-3: comparing two named shapes' positions (left/right of another) is the last skill the
# from-scratch LLM picks up; with four epochs at 8e-4 it stays at the blind level.
SFT = ["peft=none", "optim.epochs=5", "optim.lr=1.2e-3", "logging_steps=250"]


@dataclass
class Job:
    name: str  # the run directory's name under the demo's folder
    args: list[str]  # `vlmtune` arguments
    after: list[str] = field(default_factory=list)  # jobs that must have finished first


def _vlmtune(*args: str) -> None:
    print(f"\n$ vlmtune {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], check=True)


def _run_jobs(jobs: list[Job], log_dir: Path, slots: int = 2) -> None:
    """Run the jobs in dependency order, `slots` at a time, one thread each: tiny models are bound by per-op
    overhead, so single-threaded processes side by side finish sooner than the same jobs one after the other (two on
    this 2-core machine: three took 331 s instead of 314, the processes crowding each other)."""
    from vlmtune.progress import progress

    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending, running, done = list(jobs), {}, set()
    with progress(len(jobs), "demo", "stages") as bar:
        while pending or running:
            _start_ready(pending, running, done, slots, log_dir, env)
            time.sleep(0.2)
            bar.update(_collect_finished(running, done))


def _start_ready(pending: list[Job], running: dict, done: set[str], slots: int, log_dir: Path, env: dict) -> None:
    """Start the pending jobs whose dependencies are done, up to `slots` running at once."""
    from tqdm import tqdm

    for job in [j for j in pending if set(j.after) <= done][: slots - len(running)]:
        log = log_dir / f"{job.name}.log"
        tqdm.write(f"$ vlmtune {' '.join(job.args)}\n    (output in {log})")  # above the stages bar, if any
        with open(log, "w") as out:
            running[job.name] = (job, log, subprocess.Popen([sys.executable, "-m", "vlmtune.cli", *job.args],
                                                            env=env, stdout=out, stderr=subprocess.STDOUT))
        pending.remove(job)


def _collect_finished(running: dict, done: set[str]) -> int:
    """Move finished jobs to `done` and return how many; a failed one stops the others and the demo."""
    finished = 0
    for name, (job, log, process) in list(running.items()):
        if process.poll() is None:
            continue
        del running[name]
        if process.returncode != 0:
            for _, _, other in running.values():
                other.terminate()
            raise SystemExit(f"vlmtune {' '.join(job.args)} failed; its output is in {log}")
        done.add(name)
        finished += 1
    return finished


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def pipeline(runs: Path) -> list[Job]:
    """The demo's stages: contrastive -> pretrain -> sft, the same pretrain -> sft on the random tower, the blind
    sft (from the random tower's pretrain: blank images make the tower irrelevant), and quantize."""

    def run(name: str) -> str:
        return f"run_dir={runs / name}"

    def init(name: str) -> str:
        return f"init_from={runs / name / 'checkpoint'}"

    trained = [*TOWER, f"model.vision.path={runs / 'contrastive' / 'vision'}"]
    return [
        Job("contrastive", ["contrastive", run("contrastive"), *CONTRASTIVE, *DEMO]),
        Job("pretrain-random", ["pretrain", run("pretrain-random"), *TOWER, *PRETRAIN, *DEMO]),
        Job("pretrain", ["pretrain", run("pretrain"), *trained, *PRETRAIN, *DEMO], after=["contrastive"]),
        Job("sft", ["sft", run("sft"), init("pretrain"), *SFT, *DEMO], after=["pretrain"]),
        Job("sft-random", ["sft", run("sft-random"), init("pretrain-random"), *SFT, *DEMO], after=["pretrain-random"]),
        Job("sft-blind", ["sft", run("sft-blind"), init("pretrain-random"), "data.blank_images=true", *SFT, *DEMO],
            after=["pretrain-random"]),
        Job("quantize", ["quantize", run("quantize"), f"checkpoint={runs / 'sft' / 'checkpoint'}", *DEMO],
            after=["sft"]),
    ]


def report(runs: Path) -> str:
    """The demo's tables: held-out retrieval before and after contrastive training, VQA accuracy per question kind
    for the three models, and the quantization table."""
    retrieval = _metrics(runs / "contrastive")
    lines = [f"Contrastive pretraining, {retrieval['n']} held-out image-caption pairs:", "",
             "| dual encoder | image->text R@1 | text->image R@1 | zero-shot accuracy |", "|---|---|---|---|"]
    for name, prefix in (("untrained (random towers)", "before/"), ("contrastive (CLIP loss)", "")):
        cells = [retrieval[prefix + key] for key in ("image_to_text/recall@1", "text_to_image/recall@1",
                                                     "zero_shot/accuracy")]
        lines.append(f"| {name} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    models = [("blind baseline (blank images)", "sft-blind"), ("random tower (pretrain -> sft)", "sft-random"),
              ("contrastive tower (-> pretrain -> sft)", "sft")]
    scores = {name: _metrics(runs / folder) for name, folder in models}
    kinds = [k for k in scores[models[-1][0]] if k.startswith("accuracy/")]
    lines += ["", f"Visual question answering, {scores[models[-1][0]]['n']} held-out questions:", "",
              "| model | accuracy | " + " | ".join(k.removeprefix("accuracy/") for k in kinds) + " |",
              "|---|---|" + "---|" * len(kinds)]
    for name, metrics in scores.items():
        lines.append(f"| {name} | {metrics['accuracy']:.3f} | " + " | ".join(f"{metrics[k]:.3f}" for k in kinds) + " |")
    lines += ["", (runs / "quantize" / "quantize.md").read_text().rstrip()]  # sizes, memory, accuracy per variant
    return "\n".join(lines)


def main(runs: Path | None = None) -> None:
    started = time.perf_counter()
    runs = runs or Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    _vlmtune("tiny")
    _vlmtune("synth")
    print(f"\nThe road, stage by stage (two at a time; run directories under {runs}):\n", flush=True)
    _run_jobs(pipeline(runs), runs / "logs")
    print(f"\n{report(runs)}\n\nPictures: {runs}/contrastive/{{loss,similarity,attention}}.png, "
          f"{runs}/pretrain/model.png, {runs}/sft/loss.png")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
