"""A Lightning callback for the kill-and-resume test (imported by the training subprocess through
Hydra: ``+callbacks.pause._target_=reliability_callbacks.PauseAt``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """At the start of batch ``batch`` of epoch ``epoch``, write ``marker`` (``epoch batch
    global_step``) and stop making progress, so that the test can kill the process there, in the
    middle of that epoch. It draws no random numbers: the run is otherwise unchanged."""

    def __init__(self, marker: str, epoch: int, batch: int) -> None:
        self.marker, self.epoch, self.batch = Path(marker), int(epoch), int(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            tmp = self.marker.with_name(self.marker.name + ".tmp")
            tmp.write_text(f"{trainer.current_epoch} {batch_idx} {trainer.global_step} {os.getpid()}")
            os.replace(tmp, self.marker)
            while True:
                time.sleep(0.5)
