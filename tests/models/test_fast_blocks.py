"""The fast formulations of the blocks compute the plain ones' function: same outputs and
gradients (to float tolerance), same parameter names (old checkpoints load)."""

import pytest
import torch
import torch.nn.functional as F

import last_lite.models.blocks as blocks
from last_lite.models.registry import create_model


def _plain_spatial_gcn(self, x):
    """The straightforward SpatialGCN: subset weights scale the K-times-wider conv output."""
    n, _, t, v = x.shape
    k, c = self.num_subsets, self.out_channels
    adjacency = self.adjacency if self.edge_weight is None else self.adjacency * self.edge_weight
    y = self.conv(x).permute(0, 2, 3, 1).reshape(n, t, v, k, c)
    if self.subset_att is not None:
        out_degree = adjacency.sum(dim=2).t()
        pooled = (y.mean(dim=1) * out_degree[None, :, :, None]).sum(dim=1) / v
        y = y * torch.softmax(self.subset_att(pooled.flatten(1)), dim=1).view(n, 1, 1, k, 1)
    mixing = adjacency.permute(2, 1, 0).reshape(v, v * k)
    y = torch.matmul(mixing, y.reshape(n * t, v * k, c))
    return self.bn(y.view(n, t, v, c).permute(0, 3, 1, 2))


def _plain_block(self, x):
    """gate, attention (a lerp) and drop-path applied one after the other."""
    y = self.tcn(F.hardswish(self.gcn(x)))
    z = self.gate(y)
    if isinstance(self.att, blocks.STJointAtt):
        att_t = self.att.temporal(z.mean(dim=3, keepdim=True))
        att_s = self.att.spatial(z.mean(dim=2, keepdim=True))
        z = torch.lerp(z, z * att_t * att_s, self.att.alpha)
    return self.residual(x) + self.drop_path(z)


def _run(model, x, seed):
    torch.manual_seed(seed)  # the same drop-path masks in both runs
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["last_e_v3_base", "last_e_v3_large", "last_lite_small"])
def test_fast_blocks_compute_the_plain_function(name, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, layout="ucla20")
    for module in model.modules():  # gates and attention start as identities; make them act
        if hasattr(module, "alpha"):
            torch.nn.init.uniform_(module.alpha, 0.2, 0.8)
        if isinstance(module, blocks.SpatialGCN) and module.subset_att is not None:
            torch.nn.init.normal_(module.subset_att.weight, std=0.5)
    # float64, so that rounding cannot flip a max-pool's argmax or a hardswish's piece and the
    # comparison can be tight
    model.double().train()
    x = torch.randn(4, 3, 40, 20, 1, dtype=torch.float64)
    fast_out, fast_grads = _run(model, x, seed=5)
    monkeypatch.setattr(blocks.SpatialGCN, "forward", _plain_spatial_gcn)
    monkeypatch.setattr(blocks.Block, "forward", _plain_block)
    plain_out, plain_grads = _run(model, x, seed=5)
    torch.testing.assert_close(fast_out, plain_out, rtol=1e-10, atol=1e-10)
    assert fast_grads.keys() == plain_grads.keys()
    scale = max(g.abs().max() for g in plain_grads.values())
    for key, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[key], grad, rtol=1e-7, atol=1e-9 * scale,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_parameter_names_are_those_of_the_shipped_teacher():
    from safetensors.torch import load_file

    from conftest import REPO

    shipped = load_file(REPO / "zoo" / "nw_ucla" / "last_e_v3_base.safetensors")
    model = create_model("last_e_v3_base", num_classes=10, layout="ucla20")
    names = {k.removeprefix("model.") for k in shipped}
    assert names == set(model.state_dict())


def test_training_means_match_the_plain_ones_and_give_channels_last_gradients():
    """spatial_mean and the motion energy reduce the (N, T, V, C) view while training: the same
    values and gradients as the plain reductions, with the gradient channels-last like the input."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    plain = {
        (2,): lambda t: t.mean(dim=2, keepdim=True),
        (3,): lambda t: t.mean(dim=3, keepdim=True),
        (2, 3): lambda t: t.mean(dim=(2, 3), keepdim=True),
    }
    cases = [(lambda t, d=d: blocks.spatial_mean(t, d), f) for d, f in plain.items()]
    cases.append((blocks.MotionGate.motion_energy, lambda t: (t[:, :, 1:] - t[:, :, :-1]).abs().mean(dim=(2, 3))))
    for fast, reference in cases:
        grads = []
        for fn in (fast, reference):
            leaf = x.clone().requires_grad_(True)
            out = fn(leaf)
            weights = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).view(out.shape)
            (out * weights).sum().backward()
            grads.append(leaf.grad)
            with torch.no_grad():
                assert torch.allclose(fn(x), reference(x))  # the no-grad path, as exported
            assert torch.allclose(out, reference(x))
        assert torch.allclose(grads[0], grads[1])
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stride", [1, 2])
def test_the_temporal_unit_under_bf16_autocast_computes_its_float32_function(stride):
    """Under CPU bf16 autocast the strided depthwise conv runs in float32 (a slow bf16 backward);
    the unit still computes its float32 function to bf16 tolerance, gradients included."""
    torch.manual_seed(0)
    unit = blocks.EpSepTCN(24, kernel_size=5, stride=stride)
    x = torch.randn(4, 24, 16, 5).contiguous(memory_format=torch.channels_last)
    results = []
    for enabled in (False, True):
        unit.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = unit(x)
        out.float().square().mean().backward()
        results.append((out.float(), unit.depthwise[0].weight.grad.clone()))
    (out32, grad32), (out16, grad16) = results
    assert torch.allclose(out16, out32, rtol=0.05, atol=0.05)
    assert torch.allclose(grad16, grad32, rtol=0.1, atol=0.02 * grad32.abs().max().item())
