"""A CSV logger whose curves survive a resumed run (``conf/logger/csv.yaml``).

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its writer starts, so a run resumed with
``ckpt_path=last`` kept only the curves of its last sitting. This one reads the earlier rows
instead and, at its first save, writes back those logged before the first step the new sitting
logs (rows a cut-off sitting wrote after its checkpoint are logged again), then its own.
"""

from __future__ import annotations

import csv
import io

from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from last_lite.io import atomic_write_text


def _step(row: dict) -> float:
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):  # a row without a step: an earlier one
        return float("-inf")


class ResumableExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # Lightning's deletes the earlier metrics.csv here
        self.earlier_rows: list[dict] = []
        if not isinstance(self._fs, LocalFileSystem):  # a remote log folder (s3://...): Lightning's way
            super()._check_log_dir_exists()
        elif self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.earlier_rows = [{k: v for k, v in row.items() if k is not None}
                                     for row in csv.DictReader(file)]

    def save(self) -> None:
        if not self.earlier_rows or not self.metrics:
            super().save()
            return
        first_new = min(_step(m) for m in self.metrics)
        kept = [row for row in self.earlier_rows if _step(row) < first_new]
        self.earlier_rows = []
        self._record_new_keys()
        self.metrics_keys = sorted(set(self.metrics_keys).union(*kept))
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows([*kept, *self.metrics])
        atomic_write_text(self.metrics_file_path, buffer.getvalue())
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` (same arguments) that keeps a resumed run's earlier rows of ``metrics.csv``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment
