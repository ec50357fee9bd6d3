"""evaluate feeds data of another skeleton layout through the layout adapter (last_lite/adapters.py)."""

import pytest
import torch

from last_lite.adapters import AdapterError
from last_lite.evaluate import adapt_input_layout
from last_lite.training.base import ClassifierPhase

NTU_TO_UCLA = [0, 1, 20, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_ntu25_data_reaches_a_ucla20_model_as_the_joint_subset():
    module = ClassifierPhase({"name": "last_lite_small", "num_classes": 10, "layout": "ucla20", "in_channels": 3})
    module.eval()
    x = torch.randn(2, 3, 16, 25, 2)
    with torch.no_grad():
        direct = module.predict_logits(x[:, :, :, NTU_TO_UCLA])
        adapt_input_layout(module, "ntu25")
        adapted = module.predict_logits(x)
    torch.testing.assert_close(adapted, direct, atol=1e-5, rtol=1e-5)
    adapt_input_layout(module, "ucla20")  # the model's own layout: nothing to do
    with pytest.raises(AdapterError, match="from coco17 to ucla20"):
        adapt_input_layout(module, "coco17")


def test_wrong_clips_are_written_as_gifs_most_confident_first(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from last_lite.evaluate import write_wrong_clips

    torch.manual_seed(0)
    module = ClassifierPhase({"name": "last_lite_small", "num_classes": 3, "layout": "ucla20", "in_channels": 3})
    x = torch.randn(6, 3, 12, 20, 1)
    with torch.no_grad():
        module.eval()
        pred = module.predict_logits(x).argmax(-1)
    y = (pred + 1) % 3  # every clip wrong
    data = SimpleNamespace(class_names=["a", "b", "c"], layout="ucla20", coord_dims=3,
                           test_dataloader=lambda: [(x[:4], y[:4]), (x[4:], y[4:])])
    paths = write_wrong_clips(module, data, tmp_path / "wrong", 3)
    assert len(paths) == 3 and all(p.suffix == ".gif" and p.is_file() for p in paths)
    assert Image.open(paths[0]).n_frames == 12
    assert [p.name[:3] for p in paths] == ["01_", "02_", "03_"]
