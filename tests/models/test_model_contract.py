"""The one model contract (timm's), checked over every registered model (``list_models()``):
``forward = forward_head(forward_features(x)["pooled"])``, ``forward_head(pre_logits=True)`` is
the classifier's input, ``feature_info`` describes the stage taps ``forward_features`` returns."""

import pytest
import torch

from last_lite.models.registry import build_model, create_model, list_models

FRAMES, PERSONS, CLASSES = 16, 2, 7


@pytest.fixture(scope="module", params=list_models())
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, num_classes=CLASSES, layout="ntu25").eval()


def test_the_contract_attributes(model):
    for name in ("num_classes", "num_features", "stage_channels", "layout", "in_channels", "feature_info"):
        assert hasattr(model, name), name
    assert model.num_classes == CLASSES
    assert [f["num_chs"] for f in model.feature_info] == list(model.stage_channels)
    assert model.feature_info[-1]["num_chs"] == model.num_features
    names = dict(model.named_modules())
    for info in model.feature_info:
        assert set(info) == {"num_chs", "reduction", "module"} and info["module"] in names


@torch.no_grad()
def test_forward_is_features_then_head(model):
    x = torch.randn(2, model.in_channels, FRAMES, model.layout.num_joints, PERSONS)
    features = model.forward_features(x)
    pooled = features["pooled"]
    assert pooled.shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, CLASSES)
    torch.testing.assert_close(model.forward_head(pooled), logits)
    pre = model.forward_head(pooled, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    torch.testing.assert_close(model.classifier(pre), logits)
    stages = features["stages"]
    assert len(stages) == len(model.feature_info)
    for tap, info in zip(stages, model.feature_info):
        assert tap.shape[1] == info["num_chs"]
        assert tap.shape[2] == -(-FRAMES // info["reduction"])      # ceil: strided convs pad
    assert model.auxiliary_loss(pooled) is None                      # eval mode: no auxiliary term


def test_a_spec_with_or_without_target_builds_the_same_model():
    old = {"name": "last_lite_nano", "num_classes": CLASSES, "layout": "ntu25"}
    new = {"_target_": "last_lite.models.registry.create_model", **old}
    assert [p.shape for p in build_model(old).parameters()] == [p.shape for p in build_model(new).parameters()]
    with pytest.raises(ValueError, match="outside last_lite.models"):
        build_model({**old, "_target_": "os.system"})
