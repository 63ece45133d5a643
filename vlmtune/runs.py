"""What every recipe does first: validate the config, seed, make the run directory, write the resolved config.

Hydra's `@hydra.main` hands a recipe a DictConfig; `start_run` turns it into the typed config object (so a wrong
key or type fails here, naming the key), and returns a `Run` that recipes use for paths and logging.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmtune.errors import ConfigError
from vlmtune.processes import is_main_process

log = logging.getLogger("vlmtune")

# Config keys whose values never reach a log or a file (W&B config, vlmtune.json). Vocabulary tokens (a tokenizer's
# pad / bos / eos / image token, e.g. model.llm.pad_token) are text, not credentials.
_SECRET = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)
_VOCABULARY = re.compile(r"^(pad|bos|eos|unk|image|sep|cls|mask)_token$", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Copy of a plain config tree with secret-looking keys replaced by '***'."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET.search(str(k)) and not _VOCABULARY.match(str(k)) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


@dataclass
class Run:
    recipe: str  # the recipe's name: pretrain, sft, evaluate, quantize
    cfg: Any  # the typed config (a dataclass instance validated by OmegaConf)
    plain: dict[str, Any]  # the resolved config as plain containers, secrets redacted
    dir: Path  # the run directory
    tracker: Any = None  # the W&B run, or None
    preemption: Any = None  # vlmtune.train.preemption.Preemption: SIGTERM / SIGUSR1 handlers, installed at start
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def report_to(self) -> str:
        """The HF Trainer's `report_to`: W&B only where this process tracks."""
        return "wandb" if self.tracker is not None else "none"

    @property
    def state(self):
        """accelerate's process state (gloo on CPU, NCCL on GPUs), created on first use."""
        if "state" not in self.extras:
            import torch
            from accelerate import PartialState

            self.extras["state"] = PartialState(cpu=not torch.cuda.is_available())
        return self.extras["state"]

    def wait_for_everyone(self) -> None:
        self.state.wait_for_everyone()

    def provenance(self, **more: Any) -> dict[str, Any]:
        return {"recipe": self.recipe, "config": self.plain, **more}

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.tracker is not None:
            self.tracker.log(metrics, step=step)

    def record_data(self, name: str, report) -> None:
        """Print a DataReport, keep it in <run_dir>/data_<name>.json and in the W&B summary."""
        import json

        log.info("%s data:\n%s", name, report.summary())
        if is_main_process():
            (self.dir / f"data_{name}.json").write_text(json.dumps(report.as_dict(), indent=1))
        if self.tracker is not None:
            self.tracker.summary.update({f"data/{name}/{k}": v for k, v in report.as_dict().items()
                                         if k in ("samples", "kept", "images", "errors", "dropped")})

    def finish(self) -> None:
        """Close W&B, then the process group: gloo threads left running at interpreter exit can abort a rank
        ("terminate called without an active exception") after all the work is done."""
        if self.tracker is not None:
            self.tracker.finish()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def validated(cfg: DictConfig):
    """The typed config object of a composed config; a missing or mistyped value is a ConfigError naming its key."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(f"{key + ': ' if key else ''}{error.msg if hasattr(error, 'msg') else error}".strip()
                          + " (check the value on the command line or in conf/; `--cfg job` prints the composed "
                          "config)") from error


def start_run(cfg: DictConfig, recipe: str) -> Run:
    """Validate `cfg`, seed everything, create the run directory, save the resolved config, start W&B."""
    from datasets.utils import logging as datasets_logging
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from vlmtune import tracking
    from vlmtune.train.preemption import Preemption

    hf_logging.disable_progress_bar()
    datasets_logging.disable_progress_bar()
    typed = validated(cfg)
    plain = redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    run_dir = Path(typed.run_dir).resolve()
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    set_seed(typed.seed)
    run = Run(recipe=recipe, cfg=typed, plain=plain, dir=run_dir, preemption=Preemption().install())
    if is_main_process():
        run.tracker = tracking.start(typed.logger, run_dir=run_dir, job_type=recipe, config=plain)
    log.info("%s: run directory %s", recipe, run_dir)
    return run
