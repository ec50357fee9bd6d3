"""The optimiser and the learning-rate schedule, built from their configs (``conf/optim``, ``conf/sched``).

Both configs are Hydra partials: ``_target_`` is the class or function built, ``_partial_: true``
leaves the arguments only the phase module knows (parameter groups; the optimiser and the run's
step counts). Configs of checkpoints written before the ``_target_`` keys (an SGD dict without
``_target_``, a schedule picked by ``name``) are read the same way.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
from hydra.utils import instantiate

# Parameter names (suffixes) that never get weight decay besides biases and norm weights:
# gate/attention alphas, learnable edges (LAST: edge_weight, EfficientGCN: edge) and the pooling gate.
NO_DECAY_SUFFIXES = ("alpha", "edge_weight", ".edge", "pool.gate")
DEFAULT_OPTIM = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                 "weight_decay": 4e-4}
DEFAULT_SCHED = {"_target_": "last_lite.training.schedules.cosine_warmup", "warmup_epochs": 5}
_SCHEDULES = "last_lite.training.schedules."


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed conv/linear weights, and everything in the no-decay set."""
    decay, no_decay = [], []
    extra = set(getattr(model, "no_weight_decay", lambda: ())())
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES) or name in extra:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _partial(cfg: Mapping[str, Any]):
    return instantiate({**cfg, "_partial_": True, "_convert_": "all"})


def optim_config(cfg: Mapping[str, Any] | None) -> dict:
    """The optimiser config with its ``_target_`` (SGD for a pre-``_target_`` dict)."""
    cfg = dict(DEFAULT_OPTIM if cfg is None else cfg)
    cfg.setdefault("_target_", "torch.optim.SGD")
    return cfg


def sched_config(cfg: Mapping[str, Any] | None) -> dict | None:
    """The schedule config with its ``_target_`` (from ``name`` in pre-``_target_`` configs);
    None for no schedule (``name: none|constant`` or a null config)."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if "_target_" in cfg:
        if name is not None:
            raise ValueError(f"sched has both _target_ ({cfg['_target_']}) and name ({name}): pick "
                             f"the schedule with sched=<name> (conf/sched/)")
        return cfg
    if name in ("none", "constant"):
        return None
    return {"_target_": _SCHEDULES + (name or "cosine_warmup"), **cfg}


def build_optimizer(cfg: Mapping[str, Any] | None, module: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser over ``module``'s parameters in two weight-decay groups."""
    factory = _partial(optim_config(cfg))
    weight_decay = float(factory.keywords.pop("weight_decay", 0.0) or 0.0)
    return factory(weight_decay_groups(module, weight_decay))


def build_scheduler(cfg: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int):
    """The configured schedule (stepped once per optimiser step), or None."""
    cfg = sched_config(cfg)
    if cfg is None:
        return None
    return _partial(cfg)(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
