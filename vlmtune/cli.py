"""`vlmtune` command line: offline parts, demo data and the recipes (each a Hydra app in recipes/).

Kept free of heavy imports so that `vlmtune --help` answers at once; a recipe imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import runpy
import sys
from pathlib import Path

RECIPES = {
    "pretrain": "stage 1: train the projector on captions (vision tower and LLM frozen)",
    "sft": "stage 2: instruction tuning with LoRA / QLoRA / full fine-tuning (TRL SFTTrainer)",
    "dpo": "stage 3: preference tuning on chosen / rejected answers (TRL DPOTrainer, LoRA by default)",
    "evaluate": "batched greedy generation and scoring on the test split, across accelerate processes",
    "quantize": "bitsandbytes, torchao, quanto, AWQ variants against full precision: size, memory, accuracy, speed",
    "export": "merge a LoRA/QLoRA adapter into its full-precision base: a standard checkpoint",
    "chat": "talk to a checkpoint in the terminal, the answer streamed (question=... answers once and exits)",
    "predict": "answers for a folder of images or a data file to a resumable JSONL, across processes",
    "serve": "a local web page (Gradio, the serve extra): upload an image, ask, switch checkpoints",
    "describe": "print the model sft would train: parts, parameters per part, image tokens, what is trainable",
    "data": "`data inspect`: samples with supervised / masked / image spans; `data check`: validate and report",
    "contrastive": "CLIP / SigLIP training of a dual encoder on image-caption pairs; saves its vision tower too",
    "embed": "image and caption embeddings of a data split (Parquet, with ids) from a dual encoder or a VLM",
    "search": "the nearest images or captions of an `embed` output to a text or an image (FAISS), as a grid",
}


def _tiny(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    from vlmtune.hydra_setup import cache_dir
    from vlmtune.tiny import write_tiny_parts

    hf_logging.disable_progress_bar()

    parts = write_tiny_parts(Path(args.out or cache_dir() / "tiny"), force=args.force)
    for name, path in parts.items():
        print(f"{name:<18} {path}")


def _synth(args: argparse.Namespace) -> None:
    from vlmtune.data.shapes import write_shapes_dataset
    from vlmtune.hydra_setup import cache_dir

    out = Path(args.out or cache_dir() / "data" / "shapes")
    files = write_shapes_dataset(out, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                                 image_size=args.image_size, jitter=args.jitter)
    for name, path in files.items():
        print(f"{name:<18} {path}")


def _demo(args: argparse.Namespace) -> None:
    from vlmtune.demo import main as demo

    demo(Path(args.runs) if args.runs else None)


def _run_recipe(name: str, overrides: list[str]) -> None:
    """Run recipes/<name>.py's Hydra main with `overrides`, exactly as `python recipes/<name>.py` would."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Run the file as a script, not as a module: Hydra then finds conf/ relative to it, as under accelerate launch.
    path = Path(importlib.util.find_spec("recipes").origin).parent / f"{name}.py"
    sys.argv = [str(path), *overrides]
    runpy.run_path(str(path), run_name="__main__")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"] and len(argv) > 1 and argv[1] in ("inspect", "check"):
        _run_recipe("data", [f"action={argv[1]}", *argv[2:]])
        return
    if argv and argv[0] in RECIPES:  # Hydra parses the rest (overrides, -m, --cfg job, --help)
        _run_recipe(argv[0], argv[1:])
        return

    parser = argparse.ArgumentParser(prog="vlmtune", description="Compose, fine-tune, quantize and evaluate VLMs.",
                                     epilog="recipes (Hydra overrides follow the name; `vlmtune sft --help`):\n"
                                     + "\n".join(f"  {k:<10} {v}" for k, v in RECIPES.items()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write tiny random-initialised vision encoders, LLMs and a tokenizer")
    tiny.add_argument("--out", help="folder (default: $VLMTUNE_CACHE/tiny or ~/.cache/vlmtune/tiny)")
    tiny.add_argument("--force", action="store_true", help="rewrite even when present")
    tiny.set_defaults(func=_tiny)
    synth = sub.add_parser("synth", help="write the synthetic shapes VQA + caption data (LLaVA JSON + PNGs)")
    synth.add_argument("--out", help="folder (default: $VLMTUNE_CACHE/data/shapes)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--n-train", type=int, default=4000)
    synth.add_argument("--n-test", type=int, default=500)
    synth.add_argument("--image-size", type=int, default=48)
    synth.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=False,
                       help="offset each shape randomly inside its grid cell (default: centred, one patch per cell)")
    synth.set_defaults(func=_synth)
    demo = sub.add_parser("demo", help="tiny parts -> pretrain -> sft (and a blind baseline) -> evaluate -> quantize")
    demo.add_argument("--runs", help="folder for the demo's run directories (default: runs/demo/<time>)")
    demo.set_defaults(func=_demo)
    for name, text in RECIPES.items():
        sub.add_parser(name, help=text, add_help=False)
    args = parser.parse_args(argv)
    from vlmtune.errors import run_command

    run_command(lambda: args.func(args))


if __name__ == "__main__":
    main()
