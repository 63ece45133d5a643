"""Bad-input errors and the report that counts them.

Every data problem is a `DataError` with a `kind` (for the report) and a message that names the file, the sample
and what to do. With `data.on_error=raise` the first one stops the run; with `skip` the sample is left out and
counted in a `DataReport`, which the run prints and logs: nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlmtune.errors import DataError

__all__ = ["DataError", "DataReport", "histogram"]


@dataclass
class DataReport:
    """What reading a dataset found: samples kept, images, and errors by kind with their first messages."""

    samples: int = 0  # samples read (kept + skipped)
    kept: int = 0  # samples that go on to training / evaluation
    images: int = 0  # images in the kept samples
    errors: Counter = field(default_factory=Counter)  # kind -> count of skipped samples
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> the first few messages
    dropped: Counter = field(default_factory=Counter)  # reason -> samples dropped or shortened (e.g. too long)
    lengths: list[int] = field(default_factory=list)  # tokens per kept sample, image tokens included

    def add_error(self, error: DataError, keep_examples: int = 3) -> None:
        self.errors[error.kind] += 1
        self.examples.setdefault(error.kind, [])
        if len(self.examples[error.kind]) < keep_examples:
            self.examples[error.kind].append(str(error))

    def summary(self) -> str:
        lines = [f"samples {self.samples}, kept {self.kept}, images {self.images}"]
        for kind, count in sorted(self.errors.items()):
            lines.append(f"  skipped {count} x {kind}: {self.examples[kind][0]}")
        for reason, count in sorted(self.dropped.items()):
            lines.append(f"  {count} x {reason}")
        if self.lengths:
            lines.append(f"  tokens per sample: min {min(self.lengths)}, max {max(self.lengths)}")
            lines.extend(f"  {line}" for line in histogram(self.lengths))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"samples": self.samples, "kept": self.kept, "images": self.images, "errors": dict(self.errors),
                "dropped": dict(self.dropped), "examples": self.examples,
                "max_length": max(self.lengths, default=0)}


def histogram(values: list[int], bins: int = 8, width: int = 40) -> list[str]:
    """A text histogram: one line per bin, `[low, high) count ####`."""
    low, high = min(values), max(values) + 1
    step = max(1, -(-(high - low) // bins))
    counts = Counter((v - low) // step for v in values)
    most = max(counts.values())
    return [f"[{low + i * step:>6}, {low + (i + 1) * step:>6}) {counts.get(i, 0):>7} "
            f"{'#' * round(width * counts.get(i, 0) / most)}" for i in range((high - low + step - 1) // step)]

