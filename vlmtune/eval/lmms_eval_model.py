"""lmms-eval model `vlmtune`: any vlmtune checkpoint (full, adapter, vlmtune-typed, plain llava, int8 / nf4) under
lmms-eval's tasks, e.g. `python -m lmms_eval --model vlmtune --model_args pretrained=<dir> --tasks <task>`.

Optional: needs lmms-eval, which finds this class through the `lmms_eval.models` entry point in pyproject.toml
(`manifest` below). Importing this module imports lmms-eval; the rest of vlmtune never does.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.api.model import lmms

from vlmtune.eval.lmms_requests import (
    generate_for_requests,
    generation_settings,
    prompt_record,
    score_continuation,
)


def manifest():
    """The entry point's payload: lmms-eval's model id `vlmtune` for the class below."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vlmtune", simple_class_path=f"{__name__}.VlmtuneLMM")


class VlmtuneLMM(lmms):
    """A vlmtune checkpoint answering lmms-eval's generate_until and loglikelihood requests.

    Every process holds a full replica on its own device; lmms-eval gives each its share of the documents by
    `rank` / `world_size` and gathers the scores.
    """

    is_simple = True  # lmms-eval passes (context, generation settings, doc_to_visual, doc_id, task, split)

    def __init__(self, pretrained: str, batch_size: int | str = 1, max_new_tokens: int = 1024,
                 dtype: str = "float32", device: str | None = None, max_batch_size: int | None = None) -> None:
        """`pretrained`: a checkpoint or adapter directory (adapters are merged); `max_new_tokens`: the budget for
        tasks whose generation_kwargs set none; `device` applies to a single process (else each rank's own)."""
        super().__init__()
        import torch
        from accelerate import Accelerator

        from vlmtune.model.checkpoint import load_vlm

        if not str(batch_size).isdigit():
            raise ValueError(f"vlmtune: batch_size={batch_size!r}; give a number of prompts per batch ('auto' and "
                             "max_batch_size are not supported)")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = torch.device(device) if device and self._world_size == 1 else self.accelerator.device
        self._model, self.processor = load_vlm(pretrained, dtype=getattr(torch, dtype), device=self._device,
                                               what="lmms-eval model_args pretrained")
        self.batch_size_per_process = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_process

    def _images(self, doc_to_visual, doc_id: Any, task: str, split: str) -> list[Any]:
        images = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        videos = [v for v in images or [] if isinstance(v, str)]
        if videos:  # lmms-eval passes videos as file paths; vlmtune models take images
            raise ValueError(f"task {task!r} doc {doc_id}: video inputs ({videos[0]}, ...) are not supported "
                             "by vlmtune")
        return list(images or [])

    def generate_until(self, requests) -> list[str]:
        """Greedy answers, cut at the task's `until` strings, at most its `max_new_tokens` (else the model's)."""
        batch = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            record = prompt_record((task, split, doc_id), context, self._images(doc_to_visual, doc_id, task, split))
            batch.append((record, generation_settings(gen_kwargs, self.max_new_tokens)))
        return generate_for_requests(self.model, self.processor, batch, self.batch_size)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(mean negative log-likelihood per continuation token, is the continuation the greedy one) per request.

        The mean NLL, not the log-probability the base class's docstring names: it is what lmms-eval's own HF models
        return (their loss) and what its multiple_choice scoring expects, taking the argmin over the choices.
        """
        results = []
        for request in requests:
            if len(request.args) == 2:  # unconditional continuations (acc_mutual_info) come without a document
                (context, continuation), images, key = request.args, [], None
            else:
                context, target, doc_to_visual, doc_id, task, split = request.args
                key = (task, split, doc_id)
                images = self._images(doc_to_visual, doc_id, task, split)
                continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            record = prompt_record(key, context, images)
            log_prob, tokens, greedy = score_continuation(self.model, self.processor, record, continuation)
            results.append((-log_prob / max(tokens, 1), greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("vlmtune answers generate_until and loglikelihood tasks; multi-round tasks are not "
                                  "supported")
