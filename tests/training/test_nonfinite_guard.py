"""A NaN or inf loss skips the step with a warning and, repeated, stops the run."""

import logging
from types import SimpleNamespace

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



class _Strategy:
    """A strategy whose other process saw a non-finite loss."""

    def __init__(self):
        self.calls = []

    def reduce_boolean_decision(self, decision, all=True):
        self.calls.append((decision, all))
        return True


def test_every_process_skips_when_one_sees_a_non_finite_loss(caplog):
    """Under DDP the decision is reduced across processes ("any"): one that skipped alone would
    leave the others waiting in the gradient all-reduce. Lightning refuses a None loss there, so
    every process runs its backward and the gradients are dropped before the optimiser step."""
    module = _NaNAfter(set())
    strategy = _Strategy()
    module.trainer = SimpleNamespace(strategy=strategy, world_size=2, global_step=7)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    with caplog.at_level(logging.WARNING):
        loss = module.training_step(_batch(), 0)  # finite here, skipped with the others
    assert strategy.calls == [(False, False)]
    assert "non-finite training loss (on another process) at step 7" in caplog.text
    loss.backward()
    module.on_before_optimizer_step(optimizer)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert not optimizer.state  # no momentum either
