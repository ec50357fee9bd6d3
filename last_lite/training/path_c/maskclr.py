"""Path C: MaskCLR self-supervised pretraining of the student's encoder (no labels).

"MaskCLR" here is this project's recipe (Path C, docs/architecture.md): masked reconstruction
of skeleton joints plus a SimCLR-style contrastive loss between two augmented views. It is NOT the CVPR 2024 method of the same name (attention-guided
contrastive learning for skeleton transformers); only the name is shared.

One training step, for a batch of clips ``x`` (N, C, T, V, M):

1. two views: each sample rotated, scaled and (for the input only) jittered with Gaussian noise
   (:func:`~last_lite.training.path_c.masking.augment_view`, torch's RNG);
2. each view loses 50-75% of its joint-frame entries (graph-aware region masking and/or temporal
   block masking, :mod:`~last_lite.training.path_c.masking`), replaced by zero or a learned token;
3. the encoder (the student network's stem, stages and gated pooling: ``forward_features``; its
   classifier is never used) encodes both masked views;
4. a light decoder maps the last stage (N*M, C3, T/4, V) back to T frames and predicts every
   joint's coordinates; ``L_recon`` is the MSE on the hidden entries only (of present persons),
   against the view before masking and noise (same coordinates);
5. a projector (MLP to ``projector_dim``) on the pooled features of both views feeds NT-Xent
   (SimCLR's 2N-sample form, temperature 0.07);

and the loss is ``recon_weight * L_recon + clr_weight * L_clr`` (1 and 0.5 by default).
NT-Xent's negatives are the other clips of the same device's batch (no gathering across DDP
processes), so the batch size per device sets how many there are.
Validation logs ``val/loss``, ``val/recon`` and ``val/clr`` with views and masks drawn from a
generator reseeded at every validation epoch, so the numbers are comparable across epochs.

:func:`save_encoder` writes the encoder as safetensors under the student's own parameter names
(every state_dict key but the head's), which ``init_from=<encoder.safetensors>`` of the train
and distill commands loads; ``last_lite.pretrain`` first recomputes its BatchNorm statistics on
unmasked clips (:func:`recalibrate_batchnorm`), since pretraining only ever saw masked ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from last_lite.io import atomic_write
from last_lite.training.base import PhaseModule
from last_lite.training.path_c.masking import (STRATEGIES, apply_mask, augment_view, fold_mask,
                                        generate_masks, present_persons, region_units)

# Top-level children of a model that belong to the classification head, not the encoder.
HEAD_MODULES = ("norm", "dropout", "classifier", "ib", "fc", "head")
ENCODER_FORMAT = "last_lite.encoder/1"


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` (N, T, V, M) is True, all channels.

    ``pred`` and ``target`` are (N, C, T, V, M); entries outside the mask do not enter the value
    or its gradient (not even NaN ones). Zero when nothing is masked.
    """
    diff = torch.where(mask[:, None], pred.float() - target.float(), torch.zeros((), device=pred.device))
    count = mask.sum() * pred.shape[1]
    return diff.square().sum() / count.clamp(min=1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SimCLR's NT-Xent: 2N samples, each one's positive is its other view, the other 2N-2 are
    negatives; cosine similarities over ``temperature``, mean cross-entropy over the 2N."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    with torch.autocast(z.device.type, enabled=False):  # similarities in float32 under mixed precision
        sim = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_pairs, float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


class ReconstructionDecoder(nn.Module):
    """Last-stage features (B, C3, T_s, V) -> coordinates (B, C_in, T, V).

    Conv1x1 + BN + ReLU to ``hidden``; a learned joint-mixing matrix (V x V, starts as identity) so
    a hidden joint can draw on any other; nearest upsampling along T by repetition (deterministic
    on GPU, unlike interpolation's backward); a temporal Conv(k x 1) + BN + ReLU; Conv1x1 to C_in.
    """

    def __init__(self, in_channels: int, out_channels: int, num_joints: int, hidden: int = 64,
                 kernel: int = 5):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.joint_mix = nn.Parameter(torch.eye(num_joints))
        self.temporal = nn.Sequential(
            nn.Conv2d(hidden, hidden, (kernel, 1), padding=(kernel // 2, 0), bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.reduce(h)
        h = h @ self.joint_mix.to(h.dtype)                       # out[i] = sum_j h[j] * mix[j, i]
        b, c, ts, v = h.shape
        r = math.ceil(num_frames / ts)
        h = h[:, :, :, None].expand(b, c, ts, r, v).reshape(b, c, ts * r, v)[:, :, :num_frames]
        return self.out(self.temporal(h))


class Projector(nn.Module):
    """SimCLR projection head: Linear + BN + ReLU + Linear (to ``out_dim``)."""

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MaskToken(nn.Module):
    """A learned (C,) value for the hidden entries (``mask_value: token``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(channels))


class _Trainable(nn.ModuleDict):
    def no_weight_decay(self) -> tuple[str, ...]:
        return ("decoder.joint_mix",)


def encoder_children(model: nn.Module) -> dict[str, nn.Module]:
    """The model's top-level children that make the encoder (all but the head's)."""
    return {name: child for name, child in model.named_children() if name not in HEAD_MODULES}


def encoder_state(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors under the model's own state_dict names (head keys dropped)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()
            if k.split(".", 1)[0] not in HEAD_MODULES}


def save_encoder(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | Path,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the encoder as safetensors, atomically; ``metadata`` values are stored as strings."""
    from safetensors.torch import save_file

    tensors = encoder_state(model_or_state)
    if not tensors:
        raise ValueError("no encoder tensors to save")
    meta = {"format": ENCODER_FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running statistics on unmasked clips from ``loader``.

    Pretraining sees 50-75% masked inputs, so the running statistics it leaves describe masked
    clips; fine-tuning, the probe and deployment see whole ones. This resets them and takes the
    plain average over ``max_batches`` batches (all when None) in train mode, without gradients;
    weights are untouched. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                                   # cumulative average
    model.train()
    used = 0
    try:
        for batch in loader:
            if max_batches is not None and used >= max_batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model.forward_features(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used


class MaskCLRModule(PhaseModule):
    """The pretraining phase (see the module docstring); batches are clips ``x`` (or ``(x, y)``,
    whose labels are ignored)."""

    def __init__(self, model_spec: dict, coord_dims: int = 3,
                 mask_ratio: float | Sequence[float] = (0.5, 0.75),
                 strategies: Sequence[str] = STRATEGIES, block_len: int = 8, mask_value: str = "zero",
                 recon_weight: float = 1.0, clr_weight: float = 0.5, temperature: float = 0.07,
                 projector_dim: int = 128, projector_hidden: int = 256, decoder_channels: int = 64,
                 augment: Mapping[str, float] | None = None, val_seed: int = 0, **kwargs):
        super().__init__(model_spec, **kwargs)
        self.save_hyperparameters()
        if mask_value not in ("zero", "token"):
            raise ValueError(f"mask_value must be 'zero' or 'token', got {mask_value!r}")
        if not hasattr(self.model, "forward_features"):
            raise TypeError(f"{type(self.model).__name__} has no forward_features: it cannot be pretrained")
        self.coord_dims = int(coord_dims)
        self.mask_ratio = mask_ratio if isinstance(mask_ratio, (int, float)) else tuple(mask_ratio)
        self.strategies = tuple(strategies)
        self.block_len = int(block_len)
        self.recon_weight, self.clr_weight = float(recon_weight), float(clr_weight)
        self.temperature = float(temperature)
        self.augment = {"rotate": 0.3, "scale": 0.1, "noise_std": 0.01, **dict(augment or {})}
        self.val_seed = int(val_seed)
        layout = self.model.layout
        self.joint_groups = region_units(layout) if "region" in self.strategies else None
        in_channels = int(getattr(self.model, "in_channels", 3))
        stage_channels = getattr(self.model, "stage_channels", None)
        last = int(stage_channels[-1]) if stage_channels else int(self.model.num_features)
        self.decoder = ReconstructionDecoder(last, in_channels, layout.num_joints, hidden=decoder_channels)
        self.projector = Projector(int(self.model.num_features), projector_hidden, projector_dim)
        self.mask_token = MaskToken(in_channels) if mask_value == "token" else None
        self._eval_generator: torch.Generator | None = None
        # The head never enters the loss: frozen, so DDP (find_unused_parameters=False) does not
        # wait for its gradients. It stays in the checkpoint, and metrics.json counts it (runner).
        for name, child in self.model.named_children():
            if name in HEAD_MODULES:
                child.requires_grad_(False)

    def trainable_modules(self) -> nn.Module:
        """Encoder (the model without its head), decoder, projector and the mask token."""
        parts = dict(encoder_children(self.model))       # stem, stages, pool: the model's names
        parts.update(decoder=self.decoder, projector=self.projector)
        if self.mask_token is not None:
            parts["mask_token"] = self.mask_token
        return _Trainable(parts)

    # -- the losses ---------------------------------------------------------------------------
    def masks(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, T, V, M) masks for a batch, drawn on the CPU and moved to ``x``'s device."""
        n, _, t, v, m = x.shape
        mask = generate_masks(n * m, t, v, self.mask_ratio, self.strategies, self.joint_groups,
                              self.block_len, generator=generator)
        return fold_mask(mask, m).to(x.device)

    def view_losses(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One augmented, masked view: (reconstruction loss, projection (N, D), mask)."""
        n, c, t = x.shape[:3]
        clean, noisy = augment_view(x, coord_dims=self.coord_dims, generator=generator, **self.augment)
        mask = self.masks(x, generator)
        value = self.mask_token.token if self.mask_token is not None else 0.0
        present = present_persons(x)[:, None, None, :]                 # (N, 1, 1, M)
        # a token only where a person is: an empty slot stays zeros, as fine-tuning and deployment see it
        shown = mask & present if self.mask_token is not None else mask
        features = self.features(apply_mask(noisy, shown, value))
        last = features["stages"][-1]                              # (N*M', C3, T_s, V)
        persons = last.shape[0] // n                               # M' (1 with person_mode primary)
        pred = self.decoder(last, t)                               # (N*M', C, T, V)
        pred = pred.reshape(n, persons, c, t, -1).permute(0, 2, 3, 4, 1)
        valid = mask[..., :persons] & present[..., :persons]
        recon = masked_mse(pred, clean[..., :persons], valid)
        return recon, self.projector(features["pooled"]), mask

    def compute_losses(self, x: torch.Tensor, generator: torch.Generator | None = None
                       ) -> dict[str, torch.Tensor]:
        recon1, z1, _ = self.view_losses(x, generator)
        recon2, z2, _ = self.view_losses(x, generator)
        recon = 0.5 * (recon1 + recon2)
        clr = nt_xent(z1, z2, self.temperature)
        loss = self.recon_weight * recon + self.clr_weight * clr
        return {"loss": loss, "recon": recon, "clr": clr}

    @staticmethod
    def _clips(batch) -> torch.Tensor:
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def model_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = self.compute_losses(self._clips(batch))
        return losses["loss"], {"recon": losses["recon"].detach(), "clr": losses["clr"].detach()}

    # -- validation and test: the same losses, no labels (no classifier metrics) ----------------
    def _reset_eval_generator(self) -> None:
        self._eval_generator = torch.Generator().manual_seed(self.val_seed)

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_generator()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_generator()

    def _evaluate(self, batch, stage: str) -> None:
        x = self._clips(batch)
        if x.dim() == 6:                                           # k test clips: use them all
            x = x.flatten(0, 1)
        if self._eval_generator is None:
            self._reset_eval_generator()
        losses = self.compute_losses(x, self._eval_generator)
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, batch_size=x.shape[0], sync_dist=True,
                     prog_bar=name == "loss")

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")
