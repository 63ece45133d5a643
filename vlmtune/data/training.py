"""The training data a recipe trains on: in memory (checked and measured up front, report complete at once) or
streamed (`data.streaming=true`: checked and measured as read, report complete when training ends)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.data.errors import DataReport


@dataclass
class TrainingData:
    dataset: Any  # datasets.Dataset (in memory) or datasets.IterableDataset (streamed)
    report: DataReport  # what reading found: complete now in memory, complete after training when streamed
    records: list[dict[str, Any]] | None = None  # the samples in memory; None when streamed
    callbacks: list = field(default_factory=list)  # Trainer callbacks the data needs (the streamed report's reset)

    @property
    def streamed(self) -> bool:
        return self.records is None


def training_data(data, processor, out_dir: str | Path) -> TrainingData:
    """The `train` split (or mixture) of `data` for `processor`'s template, streamed when `data.streaming`."""
    from vlmtune.data.records import blank_images, to_dataset, training_samples
    from vlmtune.data.streaming import report_from_training_start, training_stream

    if data.streaming:
        report = DataReport()
        return TrainingData(training_stream(data, processor, report), report,
                            callbacks=[report_from_training_start(report)])
    records, report = training_samples(data, processor)
    if data.blank_images:
        records = blank_images(records, out_dir)
    return TrainingData(to_dataset(records), report, records)
