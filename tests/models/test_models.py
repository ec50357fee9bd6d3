"""The LAST family's contract with docs/models.md: shapes, counts, gates, export."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from last_lite.models import create_model, list_models
from last_lite.models.blocks import Block
from last_lite.models.graph import LAYOUTS, get_layout, graph_adjacency
from last_lite.models.profile import count_parameters

LAST_FAMILY = ["last_e_v3_nano", "last_e_v3_small", "last_e_v3_base", "last_e_v3_large",
               "last_lite_nano", "last_lite_small"]
LAYOUT_NAMES = ["ntu25", "ucla20", "coco17", "openpose18", "mediapipe33"]

EXPECTED_PARAMS = {"last_e_v3_nano": 82_847, "last_e_v3_small": 344_727, "last_e_v3_base": 720_028,
                   "last_e_v3_large": 1_080_668, "last_lite_nano": 65_654, "last_lite_small": 180_262}
STAGE_CHANNELS = {"last_e_v3_nano": (32, 48, 64), "last_e_v3_small": (48, 64, 96),
                  "last_e_v3_base": (64, 96, 128), "last_e_v3_large": (80, 112, 160),
                  "last_lite_nano": (32, 48, 64), "last_lite_small": (40, 56, 72)}


def test_registry_lists_every_variant():
    assert set(LAST_FAMILY) | {"efficientgcn_b0"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("last_e_v9")


@pytest.mark.parametrize("name", LAST_FAMILY)
def test_parameter_counts_match_the_design_table(name):
    assert count_parameters(create_model(name, num_classes=60, layout="ntu25")) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("name", LAST_FAMILY)
def test_forward_backward_on_every_layout(name, layout):
    torch.manual_seed(0)
    joints = get_layout(layout).num_joints
    model = create_model(name, num_classes=7, layout=layout).train()
    for frames in (8, 31, 64):
        for persons in (1, 2):
            x = torch.randn(2, 3, frames, joints, persons)
            logits = model(x)
            assert logits.shape == (2, 7)
            logits.sum().backward()
            assert all(p.grad is not None for p in model.parameters()
                       if p.requires_grad and not _only_in_aux_loss(model, p))
            model.zero_grad()


def _only_in_aux_loss(model, param):
    ib = getattr(model, "ib", None)
    return ib is not None and any(param is q for q in ib.parameters())


@pytest.mark.parametrize("name", LAST_FAMILY)
def test_stage_outputs_and_pooled_feature_shapes(name):
    model = create_model(name, num_classes=60).eval()
    feats = model.forward_features(torch.randn(3, 3, 64, 25, 2))
    channels = STAGE_CHANNELS[name]
    assert [tuple(s.shape) for s in feats["stages"]] == [
        (6, channels[0], 64, 25), (6, channels[1], 32, 25), (6, channels[2], 16, 25)]
    assert feats["pooled"].shape == (3, channels[2])


def test_auxiliary_loss_only_in_training_and_only_with_ib():
    base = create_model("last_e_v3_base", num_classes=10)
    pooled = base.forward_features(torch.randn(2, 3, 16, 25, 2))["pooled"]
    loss = base.train().auxiliary_loss(pooled)
    assert loss is not None and loss.ndim == 0 and torch.isfinite(loss)
    assert base.eval().auxiliary_loss(pooled) is None
    assert create_model("last_lite_small").train().auxiliary_loss(pooled[:, :72]) is None


def test_zero_initialised_gates_make_a_fresh_block_equal_its_gate_free_version():
    torch.manual_seed(0)
    adjacency = torch.from_numpy(graph_adjacency(LAYOUTS["ntu25"], 2))
    gated = Block(32, 48, adjacency, stride=2, gate="motion", joint_att=True).eval()
    plain = Block(32, 48, adjacency, stride=2, gate=None, joint_att=False).eval()
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(k.startswith(("gate.", "att.")) for k in unexpected)
    x = torch.randn(2, 32, 16, 25)
    torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=0)
    # The hybrid gate too, and a non-zero alpha really changes the output.
    hybrid = Block(32, 48, adjacency, stride=2, gate="hybrid", joint_att=True).eval()
    hybrid.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("gate.")},
                           strict=False)
    torch.testing.assert_close(hybrid(x), plain(x), rtol=0, atol=0)
    with torch.no_grad():
        gated.gate.alpha.fill_(1.0)
    assert not torch.allclose(gated(x), plain(x))


def test_person_mode_fold_uses_both_persons_and_primary_only_the_first():
    torch.manual_seed(0)
    fold = create_model("last_lite_nano", num_classes=5).eval()
    primary = create_model("last_lite_nano", num_classes=5, person_mode="primary").eval()
    primary.load_state_dict(fold.state_dict())
    x = torch.randn(2, 3, 16, 25, 2)
    x_other = x.clone()
    x_other[..., 1] = torch.randn_like(x_other[..., 1])
    assert not torch.allclose(fold(x), fold(x_other))
    torch.testing.assert_close(primary(x), primary(x_other))
    torch.testing.assert_close(primary(x), fold(x[..., :1]))
    with pytest.raises(ValueError, match="person_mode"):
        create_model("last_lite_nano", person_mode="both")


def test_same_seed_same_initial_weights():
    torch.manual_seed(123)
    a = create_model("last_e_v3_small")
    torch.manual_seed(123)
    b = create_model("last_e_v3_small")
    torch.manual_seed(124)
    c = create_model("last_e_v3_small")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_two_dimensional_keypoints_with_and_without_score():
    for channels in (2, 3):
        model = create_model("last_lite_nano", num_classes=4, layout="coco17", in_channels=channels)
        assert model(torch.randn(2, channels, 20, 17, 1)).shape == (2, 4)


def test_custom_edge_list_layout():
    edges = [[0, 1], [1, 2], [2, 3], [1, 4], [4, 5]]
    model = create_model("last_lite_nano", num_classes=3, layout={"edges": edges})
    assert model.layout.num_joints == 6 and model.layout.center == 1
    assert model(torch.randn(2, 3, 12, 6, 1)).shape == (2, 3)


def test_wrong_input_shape_is_a_clear_error():
    model = create_model("last_lite_nano")
    with pytest.raises(ValueError, match=r"expected input \(N, 3, T, 25, M\)"):
        model(torch.randn(2, 3, 16, 20, 1))


def test_no_einsum_under_models():
    package = Path(__import__("last_lite.models", fromlist=["x"]).__file__).parent
    offenders = [p.name for p in package.glob("*.py") if re.search(r"einsum\s*\(", p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("name", ["last_lite_nano", "last_lite_small"])
def test_lite_models_export_to_onnx_and_match_onnxruntime(name, tmp_path):
    import onnxruntime as ort
    torch.manual_seed(0)
    model = create_model(name, num_classes=60).eval()
    path = tmp_path / f"{name}.onnx"
    x = torch.randn(2, 3, 64, 25, 2)
    torch.onnx.export(model, (x,), str(path), input_names=["skeleton"], output_names=["logits"],
                      dynamic_axes={"skeleton": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 64, 25, 2)
        expected = model(xb).detach().numpy()
        got = session.run(None, {"skeleton": xb.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4
