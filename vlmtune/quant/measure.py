"""What a deployment decides on, per quantized variant, measured in one run: bytes on disk, load time, peak memory,
accuracy, latency per answer and generated tokens per second, at batch 1 and batched.

Each variant is measured as it will be used: reloaded from its saved directory by `load_vlm` (the loader of
evaluate, chat, predict and serve), then answering the test questions with evaluate's batched greedy generation.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

import torch

COLUMNS = {  # report column -> header of the markdown table
    "variant": "variant", "backend": "backend", "checkpoint_mb": "disk MB", "load_s": "load s",
    "peak_memory_mb": "peak MB", "memory_mb": "weights MB", "accuracy": "accuracy", "accuracy_delta": "delta",
    "latency_ms_batch1": "ms/answer b1", "tokens_per_s_batch1": "tok/s b1", "latency_ms_batched": "ms/answer bN",
    "tokens_per_s_batched": "tok/s bN",
}


class PeakMemory:
    """Peak memory added while the block runs: CUDA's peak allocation on a GPU; on the CPU the peak of the process's
    resident memory over its value at the start, sampled every 5 ms by a thread (memory freed earlier but kept by
    the allocator is reused first, so this can read low; it never counts what was there before)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = torch.device(device), 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        process = psutil.Process()
        self.start, self._top, self._stop = process.memory_info().rss, 0, threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._top = max(self._top, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self._stop.set()
        self._thread.join()
        import psutil

        self.peak = max(self._top, psutil.Process().memory_info().rss) - self.start


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; a quantized tensor subclass (torchao, quanto) counts its inner data and scales."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.nelement() * tensor.element_size()


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as loaded (`get_memory_footprint` counts a quanto weight as
    if it were still float)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def _speed(rows: list[dict[str, Any]], seconds: float) -> tuple[float, float]:
    """(milliseconds per answer, generated tokens per second)."""
    tokens = sum(row["generated_tokens"] for row in rows)
    return 1000 * seconds / max(len(rows), 1), tokens / seconds if seconds > 0 else 0.0


def measure(path: Path, records: list[dict[str, Any]], eval_cfg, *, latency_samples: int,
            device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]], Any]:
    """(report row, evaluated rows, loaded model) for the checkpoint at `path`."""
    from vlmtune.eval.generate import generate_answers
    from vlmtune.eval.run import evaluate_model, generation_settings
    from vlmtune.model.checkpoint import load_vlm
    from vlmtune.quantize import checkpoint_bytes

    settings = generation_settings(eval_cfg)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        model, processor = load_vlm(path, device=device)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        rows, metrics = evaluate_model(model, processor, records, eval_cfg)
        batched_ms, batched_tps = _speed(rows, time.perf_counter() - started)
    subset = records[:latency_samples]
    started = time.perf_counter()
    one = generate_answers(model, processor, subset, batch_size=1, max_new_tokens=settings["max_new_tokens"],
                           stop_strings=settings["stop_strings"])
    single_ms, single_tps = _speed(one, time.perf_counter() - started)
    row = {"checkpoint_mb": checkpoint_bytes(path) / 2**20, "load_s": load_s, "peak_memory_mb": memory.peak / 2**20,
           "memory_mb": weight_bytes(model) / 2**20, "accuracy": metrics["accuracy"],
           "latency_ms_batch1": single_ms, "tokens_per_s_batch1": single_tps, "latency_ms_batched": batched_ms,
           "tokens_per_s_batched": batched_tps, "batch_size": eval_cfg.batch_size, "answers": len(rows),
           "answers_batch1": len(one)}
    return row, rows, model


def markdown(table: list[dict[str, Any]]) -> str:
    """The report as a markdown table (bN: batched, at the row's batch_size)."""
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = [f"{row[key]:+.3f}" if key == "accuracy_delta" else f"{row[key]:.3f}" if key == "accuracy"
                 else f"{row[key]:.2f}" if isinstance(row[key], float) else str(row[key]) for key in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
