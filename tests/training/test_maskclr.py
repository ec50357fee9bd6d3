"""Path C (MaskCLR pretraining): losses, training steps, the Hydra entry and the saved encoder."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, safe_open

from conftest import read_metrics, run_command
from last_lite.data.datamodule import SkeletonDataModule
from last_lite.data.sources.synthetic import SyntheticSource
from last_lite.models import create_model
from last_lite.training.base import weight_decay_groups
from last_lite.training.checkpoints import init_from, load_checkpoint, load_trained_model
from last_lite.training.path_c.maskclr import (MaskCLRModule, encoder_state, masked_mse, nt_xent,
                                               recalibrate_batchnorm, save_encoder)

# A very small unlabelled synthetic set: 4 classes, one person, 32 frames.
TINY = ["model=last_lite_nano", "data.source.num_classes=4", "data.source.train_per_class=6",
        "data.source.test_per_class=2", "data.clip_len=32", "data.max_persons=1", "data.batch_size=8",
        "trainer.log_every_n_steps=1", "sched.warmup_epochs=0", "callbacks.rich_progress_bar=null"]
HEAD = {"norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked", "classifier.weight", "classifier.bias"}


def test_reconstruction_loss_ignores_unmasked_entries():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 6, 5, 2), torch.randn(2, 3, 6, 5, 2)
    mask = torch.rand(2, 6, 5, 2) < 0.4
    loss = masked_mse(pred, target, mask)
    keep = mask[:, None].expand_as(pred)
    expected = (pred[keep] - target[keep]).square().mean()
    torch.testing.assert_close(loss, expected)
    pred2, target2 = pred.clone(), target.clone()
    pred2[~keep] = torch.randn(int((~keep).sum())) * 100
    target2[~keep] = float("nan")
    assert torch.equal(masked_mse(pred2, target2, mask), loss)
    p = pred2.clone().requires_grad_(True)
    masked_mse(p, target2, mask).backward()
    assert (p.grad[~keep] == 0).all() and (p.grad[keep] != 0).any()
    assert masked_mse(pred, target, torch.zeros_like(mask)) == 0


def test_nt_xent_equals_a_hand_computation():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    z = [(a / math.hypot(a, b), b / math.hypot(a, b))
         for a, b in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 1.0))]
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for i in range(4):
        sims = {j: (z[i][0] * z[j][0] + z[i][1] * z[j][1]) / tau for j in range(4) if j != i}
        total += -sims[positive[i]] + math.log(sum(math.exp(s) for s in sims.values()))
    torch.testing.assert_close(nt_xent(z1, z2, tau), torch.tensor(total / 4))
    assert nt_xent(z1, z2, 0.07) > 0
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # similarities stay float32 under mixed precision
        mixed = nt_xent(z1, z2, 0.07)
    torch.testing.assert_close(mixed, nt_xent(z1, z2, 0.07), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    dm = SkeletonDataModule(SyntheticSource(num_classes=4, train_per_class=3, test_per_class=1),
                            split="xsub", clip_len=32, batch_size=12, max_persons=1, val_fraction=0.0,
                            unlabelled=True, cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    x = next(iter(dm.train_dataloader()))
    assert torch.is_tensor(x) and x.shape == (12, 3, 32, 25, 1)  # unlabelled: clips only
    return x


def test_training_steps_lower_both_losses(clips, mask_value="token"):
    torch.manual_seed(0)
    module = MaskCLRModule(dict(name="last_lite_nano", num_classes=4, layout="ntu25"),
                           mask_value=mask_value)
    params = module.trainable_modules()
    names = {n for n, _ in params.named_parameters()}
    assert not any(n.startswith(("classifier", "norm.")) for n in names)
    assert {"decoder.joint_mix", "projector.net.0.weight"} <= names
    assert ("mask_token.token" in names) == (mask_value == "token")
    optimizer = torch.optim.SGD(weight_decay_groups(params, 1e-4), lr=0.05, momentum=0.9)

    def measure():
        with torch.no_grad():
            out = module.compute_losses(clips, torch.Generator().manual_seed(123))
        return out["recon"].item(), out["clr"].item()

    module.train()
    before = measure()
    for _ in range(12):
        loss, terms = module.model_step(clips)
        assert set(terms) == {"recon", "clr"} and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = measure()
    assert after[0] < before[0] and after[1] < before[1], (before, after)


def test_the_mask_token_goes_only_where_a_person_is():
    """An empty person slot is zeros in fine-tuning and deployment: masking must not fill it."""
    torch.manual_seed(0)
    module = MaskCLRModule(dict(name="last_lite_nano", num_classes=4, layout="ntu25"), mask_value="token")
    with torch.no_grad():
        module.mask_token.token.fill_(5.0)
    x = torch.randn(4, 3, 32, 25, 2)
    x[..., 1] = 0  # one person
    seen = []
    features = module.features
    module.features = lambda inputs: seen.append(inputs) or features(inputs)
    module.view_losses(x, torch.Generator().manual_seed(0))
    assert (seen[0][..., 1] == 0).all() and (seen[0][..., 0] == 5.0).any()


@pytest.mark.parametrize("name", ["last_lite_nano", "last_e_v3_base"])  # base: with an IB head
def test_every_parameter_that_requires_grad_gets_a_gradient(name):
    """DDP's condition (find_unused_parameters=False, trainer=ddp/ddp_cpu): a parameter that
    requires grad but gets none stops the second step. The unused head is frozen, not dropped."""
    torch.manual_seed(0)
    module = MaskCLRModule(dict(name=name, num_classes=4, layout="ntu25"), mask_value="token").train()
    loss, _ = module.model_step(torch.randn(4, 3, 32, 25, 2))
    loss.backward()
    assert [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = {n for n, p in module.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.split(".", 1)[0] in ("norm", "classifier", "ib") for n in frozen)
    assert set(module.model.state_dict()) == set(create_model(name, num_classes=4).state_dict())


def test_saved_encoder_has_the_students_names_and_loads_into_a_student(tmp_path):
    source = create_model("last_lite_small", num_classes=10, layout="ucla20")
    path = save_encoder(source, tmp_path / "encoder.safetensors", metadata={"model": "last_lite_small"})
    tensors = load_file(str(path))
    assert set(tensors) == set(source.state_dict()) - HEAD
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata()["model"] == "last_lite_small"
    student = create_model("last_lite_small", num_classes=7, layout="ucla20")
    report = init_from(student, path)
    assert len(report["loaded"]) == len(tensors) and set(report["new"]) == HEAD
    for name, value in encoder_state(student).items():
        assert torch.equal(value, tensors[name])
    with pytest.raises(ValueError, match="does not fit"):
        init_from(create_model("last_lite_nano", num_classes=7, layout="ucla20"), path)


def test_batchnorm_recalibration_recomputes_running_statistics_only():
    torch.manual_seed(0)
    model = create_model("last_lite_nano", num_classes=4).eval()
    norm = model.stem.stream_norms[0]                                  # sees the joint stream as is
    norm.running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    x = torch.randn(6, 3, 16, 25, 2) * 2 + 1
    assert recalibrate_batchnorm(model, [x, x + 1], max_batches=1) == 1
    assert not model.training and norm.momentum == 0.1
    torch.testing.assert_close(norm.running_mean, x.mean(dim=(0, 2, 3, 4)))
    torch.testing.assert_close(norm.running_var, x.transpose(0, 1).flatten(1).var(dim=1))
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in weights.items())


# Every epoch's checkpoint is kept (e0.ckpt, e1.ckpt): the resume test starts from e0.
KEEP_ALL = [*TINY, "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1",
            "callbacks.model_checkpoint.filename='e{epoch}'"]


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pretrain")
    run_command("pretrain", KEEP_ALL, run_dir)
    return run_dir


def test_pretrain_entry_trains_two_epochs_and_writes_an_encoder_a_student_loads(pretrain_run):
    tmp_path = pretrain_run
    metrics = read_metrics(tmp_path)
    assert metrics["command"] == "pretrain" and metrics["top1"] is None and metrics["epochs"] == 2
    assert "best_val_top1" not in metrics and math.isfinite(metrics["best_val_loss"])
    final = metrics["final"]
    assert {"val/loss", "val/recon", "val/clr", "train/recon", "train/clr"} <= set(final)
    assert metrics["bn_recalibration_batches"] == 2                  # every batch of the tiny set
    assert metrics["pretrain"]["clr_weight"] == 0.5 and metrics["pretrain"]["temperature"] == 0.07
    config = (tmp_path / "config.yaml").read_text()
    assert "unlabelled: true" in config and "monitor: val/loss" in config
    encoder = tmp_path / "encoder.safetensors"
    assert metrics["encoder"] == str(encoder)
    # Path A/B start from it: every backbone tensor loads, the classifier and head norm stay new.
    student = create_model("last_lite_nano", num_classes=4, layout="ntu25")
    report = init_from(student, encoder)
    assert len(report["loaded"]) == metrics["encoder_tensors"] == len(student.state_dict()) - len(HEAD)
    assert set(report["new"]) == HEAD and not report["skipped"]
    assert metrics["params"] == sum(p.numel() for p in student.parameters())  # the frozen head counts
    # its checkpoint's classifier was never trained: evaluate and export refuse it, naming the encoder
    with pytest.raises(ValueError, match=f"MaskCLR pretraining checkpoint.*init_from={encoder}"):
        load_trained_model(tmp_path / "checkpoints" / "last.ckpt")


def test_pretraining_at_the_field_recipes_checkpoint_settings_writes_last_ckpt_and_an_encoder(tmp_path):
    # experiment=nw_ucla_full: no hold-out, no monitor. The best-on-val writer (mode min here) would
    # save exactly when last.ckpt's writer does, which Lightning refused: the run stopped at start.
    run_command("pretrain", [*TINY, "trainer.max_epochs=1", "data.val_fraction=0", "selection=last",
                             "callbacks.model_checkpoint.monitor=null", "bn_recalibration_batches=1"], tmp_path)
    metrics = read_metrics(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert metrics["checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert metrics["encoder"] == str(tmp_path / "encoder.safetensors") and metrics["epochs"] == 1


def test_pretrain_config_is_unlabelled_monitors_val_loss_and_takes_extra_sources(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from conftest import REPO

    extra = ("data.extra_sources=[{_target_: last_lite.data.sources.synthetic.SyntheticSource, "
             "num_classes: 4, train_per_class: 2, test_per_class: 1, seed: 5}]")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"paths.root_dir={tmp_path}", "data.source.num_classes=4",
                                             "data.source.train_per_class=3", extra])
    assert cfg.task_name == "pretrain" and cfg.test_after_fit is False
    checkpoint = cfg.callbacks.model_checkpoint
    assert checkpoint.monitor == "val/loss" and checkpoint.mode == "min"
    assert cfg.maskclr.clr_weight == 0.5 and cfg.maskclr.temperature == 0.07
    dm = instantiate(cfg.data, _convert_="all")
    assert dm.unlabelled and len(dm.extra_sources) == 1
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset()) == len(dm.train_indices) + 4 * 3


def test_resumed_pretraining_reproduces_the_uninterrupted_run(pretrain_run, tmp_path):
    """Views and masks come from torch's CPU RNG, whose state the checkpoints carry."""
    run_command("pretrain", [*KEEP_ALL, f"ckpt_path={pretrain_run / 'checkpoints' / 'e0.ckpt'}"], tmp_path)
    a = load_checkpoint(pretrain_run / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("decoder.") for k in a)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_ckpt_path_last_completes_a_pretraining_cut_off_before_its_encoder_and_skips_a_done_one(pretrain_run, tmp_path):
    """metrics.json is written before the encoder: a run cut off between the two is not finished.
    (In a copy of the run folder: a folder moved elsewhere resumes too.)"""
    run_dir = tmp_path / "run"
    shutil.copytree(pretrain_run, run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    for key in ("encoder", "encoder_tensors", "bn_recalibration_batches", "final", "pretrain"):
        record.pop(key)
    (run_dir / "metrics.json").write_text(json.dumps(record))  # as run_phase leaves it
    (run_dir / "encoder.safetensors").unlink()
    resumed = run_command("pretrain", [*KEEP_ALL, "ckpt_path=last"], run_dir)
    assert "completing it" in resumed.stderr + resumed.stdout
    metrics = read_metrics(run_dir)
    assert metrics["encoder"] == str(run_dir / "encoder.safetensors") and metrics["epochs"] == 2
    assert (run_dir / "encoder.safetensors").is_file()
    done = (run_dir / "metrics.json").read_bytes()
    again = run_command("pretrain", [*KEEP_ALL, "ckpt_path=last"], run_dir)
    assert "nothing to do" in again.stderr + again.stdout and (run_dir / "metrics.json").read_bytes() == done
