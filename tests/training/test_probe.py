"""The linear probe: cached features, the linear classifier and the Hydra entry."""

import torch

from conftest import read_metrics, run_command
from last_lite.models import create_model
from last_lite.training.path_c.linear_probe import extract_features, fit_linear_probe, probe_accuracy
from last_lite.training.path_c.maskclr import save_encoder


def test_the_probe_separates_separable_features_whatever_their_scale():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    features = (centres[labels] + 0.1 * torch.randn(120, 3, generator=g)) * torch.tensor([1e3, 1e3, 1e-3])
    probe = fit_linear_probe(features, labels, 3, epochs=150, lr=0.05, seed=0)
    acc = probe_accuracy(probe, features, labels, 3)
    assert acc["top1"] > 0.95 and acc["top5"] == 1.0 and len(acc["per_class_accuracy"]) == 3
    again = fit_linear_probe(features, labels, 3, epochs=150, lr=0.05, seed=0)
    assert torch.equal(probe.linear.weight, again.linear.weight)              # seeded
    mini = fit_linear_probe(features, labels, 3, epochs=30, lr=0.05, batch_size=16)
    assert probe_accuracy(mini, features, labels, 3)["top1"] > 0.9


def test_a_class_without_samples_has_no_probe_accuracy():
    probe = fit_linear_probe(torch.eye(3), torch.arange(3), 3, epochs=1, lr=0.05, seed=0)
    acc = probe_accuracy(probe, torch.eye(3)[:2], torch.arange(2), 3)
    assert acc["per_class_accuracy"][2] is None and all(a in (0.0, 1.0) for a in acc["per_class_accuracy"][:2])


def test_features_are_pooled_in_eval_mode_and_averaged_over_test_clips():
    torch.manual_seed(0)
    model = create_model("last_lite_nano", num_classes=4).train()
    x = torch.randn(3, 2, 3, 16, 25, 1)
    y = torch.tensor([0, 1, 2])
    feats, labels = extract_features(model, [(x, y)])
    assert model.training and feats.shape == (3, model.num_features) and torch.equal(labels, y)
    model.eval()
    with torch.no_grad():
        expected = torch.stack([model.forward_features(x[:, k])["pooled"] for k in range(2)]).mean(0)
    torch.testing.assert_close(feats, expected)


def test_probe_entry_writes_metrics(tmp_path):
    encoder = save_encoder(create_model("last_lite_nano", num_classes=4), tmp_path / "enc.safetensors")
    run_dir = tmp_path / "probe"
    run_command("probe", ["model=last_lite_nano", f"encoder={encoder}", "data.source.num_classes=4",
                          "data.source.train_per_class=6", "data.source.test_per_class=2",
                          "data.clip_len=32", "data.max_persons=1", "probe.epochs=50"], run_dir)
    metrics = read_metrics(run_dir)
    assert metrics["command"] == "probe" and metrics["model"] == "last_lite_nano"
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and 0.0 <= metrics["train_top1"] <= 1.0
    assert metrics["num_train"] == 24 and metrics["num_test"] == 8    # the whole train split
    assert len(metrics["per_class_accuracy"]) == 4 and metrics["feature_dim"] == 64
    assert metrics["encoder"] == str(encoder)
    assert metrics["init"]["loaded"] > 100 and metrics["init"]["encoder_left_random"] == 0
    assert (run_dir / "config.yaml").is_file()
