"""Step checkpoints: which one a run resumes from, and putting its weights back exactly.

The Trainer writes a step checkpoint in several files from several processes (weights, optimizer, scheduler, one RNG
state per process, trainer state). A kill can stop it anywhere in that, so a checkpoint counts only once every
process has finished writing it: `MarkComplete` then writes a marker file into it, and only then deletes the oldest
complete checkpoints beyond `save_total_limit` (the Trainer's own rotation would delete them before the new one is
whole). Resuming considers marked checkpoints only; incomplete ones are removed when a run resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from vlmtune.errors import CheckpointError, ConfigError
from vlmtune.processes import is_main_process, wait_for_all

log = logging.getLogger("vlmtune")

COMPLETE = "vlmtune_complete.json"  # written into a step checkpoint once every process has finished writing it
PREFIX = "checkpoint-"


def _step(path: Path) -> int | None:
    try:
        return int(path.name.removeprefix(PREFIX)) if path.name.startswith(PREFIX) else None
    except ValueError:
        return None


def is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return True


def latest_complete_checkpoint(trainer_dir: str | Path) -> Path | None:
    """The newest `checkpoint-N` under `trainer_dir` that every process finished writing, or None."""
    complete = [(step, path) for path in Path(trainer_dir).glob(f"{PREFIX}*")
                if (step := _step(path)) is not None and is_complete(path)]
    return max(complete)[1] if complete else None


class MarkComplete(TrainerCallback):
    """After each save: wait until every process has written its part, mark the checkpoint complete, then keep the
    newest `keep` complete checkpoints (None: all)."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        wait_for_all()
        if not is_main_process():
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        (checkpoint / COMPLETE).write_text(json.dumps({"step": state.global_step}))
        if self.keep:
            complete = sorted((step, path) for path in Path(args.output_dir).glob(f"{PREFIX}*")
                              if (step := _step(path)) is not None and is_complete(path))
            for _, path in complete[: -self.keep]:
                (path / COMPLETE).unlink()  # first: a kill during the deletion leaves an incomplete checkpoint
                shutil.rmtree(path, ignore_errors=True)


def resume_point(resume: str, trainer_dir: Path) -> str | None:
    """What `Trainer.train(resume_from_checkpoint=...)` gets for the `resume` setting (auto | never | a path).

    With `auto`, step checkpoints a kill cut short are deleted (by the main process): the run writes them again.
    """
    if resume == "never":
        return None
    if resume == "auto":
        latest = latest_complete_checkpoint(trainer_dir)
        if is_main_process():
            for path in Path(trainer_dir).glob(f"{PREFIX}*"):
                step = _step(path)
                if step is not None and not is_complete(path) and (latest is None or step > _step(latest)):
                    log.info("removing %s: a kill interrupted its writing", path)
                    shutil.rmtree(path, ignore_errors=True)
        wait_for_all()
        return str(latest) if latest else None
    if not Path(resume).is_dir():
        raise ConfigError(f"resume={resume}: no such checkpoint directory (give a checkpoint-N folder of a run's "
                          "trainer/ directory, or resume=auto|never)")
    if not is_complete(Path(resume)):
        raise CheckpointError(f"resume={resume}: this step checkpoint was not completely written (no {COMPLETE}); "
                              "a kill interrupted it. Give an earlier checkpoint, or resume=auto")
    return resume


def load_full_weights(model, checkpoint: Path) -> None:
    """Put a step checkpoint's full weights (model.safetensors, or its shards) into `model`, in place and exactly.

    transformers 5 saves some architectures (Llava among them) in their original key layout and renames the keys
    when `from_pretrained` loads them; the Trainer's resume loads the file as it is with strict=False, which silently
    loads none of those weights. Here the keys go through transformers' own renaming, and every weight must be
    covered (tied weights excepted): anything else is an error, never a silent partial load.
    """
    from safetensors.torch import load_file
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    index = checkpoint / "model.safetensors.index.json"
    files = sorted({checkpoint / name for name in json.loads(index.read_text())["weight_map"].values()}) \
        if index.exists() else [checkpoint / "model.safetensors"]
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    expected = model.state_dict()
    state = {}
    for file in files:
        for key, tensor in load_file(file).items():
            name, converted = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
            if converted is not None:  # a key split or fused on load: not a layout the Trainer writes for our models
                raise CheckpointError(f"{checkpoint}: weight {key} needs a tensor conversion to load; resume "
                                      "from this checkpoint is not supported (start a new run with init_from=)")
            state[name] = tensor
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [name for name in result.missing_keys if name not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint} does not hold this model's weights: {len(missing)} missing (e.g. "
                              f"{missing[:2]}), {len(result.unexpected_keys)} unexpected (e.g. "
                              f"{result.unexpected_keys[:2]}). Resume it with the command that wrote it.")
