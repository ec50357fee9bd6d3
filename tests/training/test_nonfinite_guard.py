"""A NaN or inf loss skips the step with a warning and, repeated, stops the run."""

import logging

import pytest
import torch

from last_lite.training.supervised import SupervisedModule


class _NaNAfter(SupervisedModule):
    """The real module, with the loss replaced by NaN on chosen calls."""

    def __init__(self, nan_calls, **kwargs):
        super().__init__({"name": "last_lite_nano", "num_classes": 4}, **kwargs)
        self.nan_calls, self.calls = set(nan_calls), 0

    def model_step(self, batch):
        loss, terms = super().model_step(batch)
        self.calls += 1
        return (loss * float("nan") if self.calls in self.nan_calls else loss), terms


def _batch():
    return torch.randn(4, 3, 16, 25, 2), torch.tensor([0, 1, 2, 3])


def test_a_nan_loss_skips_the_step_with_a_warning(caplog):
    module = _NaNAfter({2}, max_nonfinite_steps=3)
    with caplog.at_level(logging.WARNING):
        assert module.training_step(_batch(), 0) is not None
        assert module.training_step(_batch(), 1) is None
        assert module.training_step(_batch(), 2) is not None
    assert "non-finite training loss" in caplog.text


def test_repeated_nan_losses_stop_the_run_with_a_clear_message():
    module = _NaNAfter({1, 2, 3}, max_nonfinite_steps=3)
    module.training_step(_batch(), 0)
    module.training_step(_batch(), 1)
    with pytest.raises(RuntimeError, match="NaN or inf for 3 steps in a row"):
        module.training_step(_batch(), 2)
