"""Path B: the loss, the frozen teacher, projections, Path A equivalence, Hydra runs and sweeps."""

import csv
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import TINY_DATA, read_metrics, run_command
from last_lite.data.datamodule import SkeletonDataModule
from last_lite.data.sources.synthetic import SyntheticSource
from last_lite.models import create_model
from last_lite.training.base import weight_decay_groups
from last_lite.training.distillation import DistillModule
from last_lite.training.losses import feature_mimicry, soft_label_kl
from last_lite.training.supervised import SupervisedModule
from last_lite.summarize import write_tables



def test_soft_label_kl_and_feature_mimicry_equal_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    tau = 2.0
    p_t = torch.softmax(t / tau, 1)
    p_s = torch.softmax(s / tau, 1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * tau ** 2
    torch.testing.assert_close(soft_label_kl(s, t, tau), by_hand)
    a, b = [torch.ones(2, 3), torch.zeros(1, 4)], [torch.zeros(2, 3), torch.full((1, 4), 2.0)]
    torch.testing.assert_close(feature_mimicry(a, b), torch.tensor(1.0 + 4.0))
    # under mixed precision (precision=auto on a bf16 CPU) the loss keeps float32 arithmetic
    s_bf16 = s.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = soft_label_kl(s_bf16, t, tau)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, soft_label_kl(s_bf16.float(), t, tau), rtol=1e-6, atol=1e-7)


def _teacher_ckpt(tiny_teacher_run):
    return read_metrics(tiny_teacher_run)["checkpoint"]


def _specs():
    student = {"name": "last_lite_nano", "num_classes": 16, "layout": "ntu25", "in_channels": 3}
    teacher = {**student, "name": "last_e_v3_nano"}
    return student, teacher


def _teacher_file(path, **overrides) -> str:
    """An untrained teacher saved as a last_lite command saves it: weights and model_spec."""
    spec = {**_specs()[1], **overrides}
    state = create_model(**spec).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"model_spec": spec}}, path)
    return str(path)


def _batch():
    return torch.randn(4, 3, 16, 25, 2), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("gamma", [0.0, 0.1])
def test_every_parameter_that_requires_grad_gets_a_gradient(tmp_path, gamma):
    """DDP's condition (find_unused_parameters=False): with gamma=0 the projections are unused,
    so they are frozen and left out of the optimiser, and checkpoints keep them either way."""
    student, teacher = _specs()
    ckpt = _teacher_file(tmp_path / "teacher.ckpt")
    module = DistillModule(student, teacher, ckpt, gamma=gamma).train()
    loss, _ = module.model_step(_batch())
    loss.backward()
    assert [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(p.requires_grad == bool(gamma) for p in module.projections.parameters())
    optimised = {id(p) for group in weight_decay_groups(module.trainable_modules(), 1e-4) for p in group["params"]}
    assert optimised == {id(p) for p in module.parameters() if p.requires_grad}
    DistillModule(student, teacher, ckpt, gamma=0.1 - gamma).load_state_dict(module.state_dict())


def test_a_teacher_trained_in_another_person_mode_is_refused_naming_the_override(tmp_path):
    """person_mode changes no parameter: without the check the weights load and the teacher runs
    in the config's mode, not the one it was trained in."""
    student, teacher = _specs()
    ckpt = _teacher_file(tmp_path / "primary.ckpt", person_mode="primary")
    with pytest.raises(ValueError, match=r"trained with person_mode='primary' but the teacher config builds "
                                         r"person_mode='fold': pass \+teacher\.person_mode=primary"):
        DistillModule(student, teacher, ckpt)
    # a zoo file: the spec is its index entry's; a file no index lists is loaded as before
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    save_file(create_model(**teacher).state_dict(), str(zoo / "teacher.safetensors"))
    save_file(create_model(**teacher).state_dict(), str(tmp_path / "unlisted.safetensors"))
    (zoo / "index.json").write_text(json.dumps({"synthetic/teacher": {
        "file": "teacher.safetensors", "sha256": "-", "model_spec": {**teacher, "person_mode": "primary"}}}))
    with pytest.raises(ValueError, match=r"pass \+teacher\.person_mode=primary"):
        DistillModule(student, teacher, str(zoo / "teacher.safetensors"))
    DistillModule(student, teacher, str(tmp_path / "unlisted.safetensors"))
    # the teacher in its own mode: feature mimicry then needs the student in it too
    primary = {**teacher, "person_mode": "primary"}
    with pytest.raises(ValueError, match=r"the student has 'fold', the teacher 'primary': pass "
                                         r"\+student\.person_mode=primary or kd\.gamma=0"):
        DistillModule(student, primary, ckpt, gamma=0.1)
    DistillModule(student, primary, ckpt, gamma=0.0).model_step(_batch())  # logits only: any mode
    loss, terms = DistillModule({**student, "person_mode": "primary"}, primary, ckpt).model_step(_batch())
    assert torch.isfinite(loss) and "feature_mse" in terms


def test_feature_mimicry_refuses_stages_of_another_shape_naming_person_mode():
    # fold (N*M = 8) against primary (N = 4): MSE would fail with a broadcast error naming no cause
    with pytest.raises(ValueError, match=r"stage 1 is \(4, 8, 4, 25\) in the student .* but \(8, 8, 4, 25\) "
                                         r"in the teacher.*person_mode"):
        feature_mimicry([torch.zeros(4, 8, 8, 25), torch.zeros(4, 8, 4, 25)],
                        [torch.zeros(4, 8, 8, 25), torch.zeros(8, 8, 4, 25)])


def test_total_loss_combines_the_terms_as_specified(tiny_teacher_run):
    student, teacher = _specs()
    module = DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run), alpha=0.3, tau=4.0, gamma=0.1)
    assert module.beta == pytest.approx(0.7)
    assert DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run), alpha=0.3, beta=0.2).beta == 0.2
    module.train()
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 16, 25, 2), torch.tensor([0, 3, 5, 7])
    torch.manual_seed(1)
    loss, terms = module.model_step((x, y))
    torch.manual_seed(1)
    feats = module.model.forward_features(x)
    logits = module.model.forward_head(feats["pooled"])
    with torch.no_grad():
        t_feats = module.teacher.forward_features(x)
        t_logits = module.teacher.forward_head(t_feats["pooled"])
    ce = F.cross_entropy(logits, y, label_smoothing=0.1)
    kl = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="batchmean") * 16
    mse = sum(F.mse_loss(p(s), t) for p, s, t in zip(module.projections, feats["stages"], t_feats["stages"]))
    torch.testing.assert_close(loss, 0.3 * ce + 0.7 * kl + 0.1 * mse)
    torch.testing.assert_close(terms["feature_mse"], mse.detach())


def test_a_compiled_teacher_gives_the_same_targets_in_training_steps_only(tiny_teacher_run):
    student, teacher = _specs()
    eager = DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run))
    compiled = DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run), teacher_compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their names
    x = torch.randn(4, 3, 16, 25, 2)
    for module in (eager, compiled):
        module.eval()
        module.targets_eval = module.run_teacher(x)
    assert compiled._compiled_teacher is None  # evaluation's batch sizes vary: it stays eager
    for module in (eager, compiled):
        module.train()
        module.targets = module.run_teacher(x)
    assert compiled._compiled_teacher is not None and eager._compiled_teacher is None
    for a, b in ((eager.targets, compiled.targets), (eager.targets_eval, compiled.targets_eval)):
        for t_eager, t_compiled in zip([*a[0], a[1]], [*b[0], b[1]]):
            torch.testing.assert_close(t_compiled, t_eager, rtol=1e-4, atol=1e-5)


def test_projections_map_each_student_stage_to_the_teacher_channels(tiny_teacher_run):
    student, teacher = _specs()
    module = DistillModule({**student, "name": "last_lite_small"}, teacher, _teacher_ckpt(tiny_teacher_run))
    assert [(p.in_channels, p.out_channels, p.kernel_size) for p in module.projections] == [
        (40, 32, (1, 1)), (56, 48, (1, 1)), (72, 64, (1, 1))]
    assert not any(k.startswith("projections") for k in module.model.state_dict())


def test_the_teacher_gets_no_gradient_and_stays_unchanged_after_a_step(tiny_teacher_run):
    student, teacher = _specs()
    module = DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run), alpha=0.5, gamma=0.1)
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    module.train()
    assert not module.teacher.training
    optimizer = torch.optim.SGD(module.trainable_modules().parameters(), lr=0.1)
    loss, _ = module.model_step((torch.randn(4, 3, 16, 25, 2), torch.tensor([0, 1, 2, 3])))
    loss.backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is not None for p in module.projections.parameters())


def test_a_teacher_checkpoint_that_does_not_fit_fails_before_training(tiny_teacher_run):
    student, teacher = _specs()
    with pytest.raises(ValueError, match="does not fit teacher config 'last_e_v3_small'"):
        DistillModule(student, {**teacher, "name": "last_e_v3_small"}, _teacher_ckpt(tiny_teacher_run))


def _fit(module, seed):
    datamodule = SkeletonDataModule(SyntheticSource(num_classes=16, train_per_class=4, test_per_class=2),
                                    split="xsub", clip_len=16, batch_size=16, seed=seed,
                                    cache_dir="outputs/cache")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    return module.model.state_dict()


def test_alpha_one_gamma_zero_trains_exactly_like_path_a(tiny_teacher_run):
    student, teacher = _specs()
    L.seed_everything(3)
    path_a = _fit(SupervisedModule(student, sched={"name": "cosine_warmup", "warmup_epochs": 0}), 3)
    L.seed_everything(3)
    path_b = _fit(DistillModule(student, teacher, _teacher_ckpt(tiny_teacher_run), alpha=1.0, gamma=0.0,
                                sched={"name": "cosine_warmup", "warmup_epochs": 0}), 3)
    for key, value in path_a.items():
        torch.testing.assert_close(path_b[key], value, rtol=0, atol=0, msg=key)


def test_distillation_and_a_small_sweep_run_through_hydra(tiny_teacher_run, tmp_path):
    ckpt = f"teacher.ckpt={_teacher_ckpt(tiny_teacher_run)}"
    # the single run in the former spellings (rewritten with a warning), the sweep in today's
    former = [ckpt, "teacher=last_e_v3_nano", "student=last_lite_nano", "distill=nano"]
    teacher = [ckpt, "model@teacher=last_e_v3_nano", "model@student=last_lite_nano", "kd=nano"]
    single = run_command("distill", [*former, "trainer.max_epochs=2", *TINY_DATA], tmp_path / "single")
    assert "distill=nano is the former spelling of kd=nano" in single.stderr
    assert "student=last_lite_nano is the former spelling of model@student=last_lite_nano" in single.stderr
    metrics = read_metrics(tmp_path / "single")
    assert metrics["command"] == "distill" and metrics["model"] == "last_lite_nano"
    with open(tmp_path / "single" / "csv" / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    assert {"train/ce", "train/kl", "train/feature_mse", "val/teacher_top1"} <= set(header)

    sweep = tmp_path / "sweep"
    run_command("distill", ["-m", *teacher, "kd.alpha=0.3,0.7", "kd.gamma=0.1",
                            "trainer.max_epochs=1", *TINY_DATA, f"hydra.sweep.dir={sweep}"], tmp_path / "unused")
    table = write_tables(sweep)
    assert table.count("\n| ") == 2 and "kd.alpha" in table
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert [r["kd.alpha"] for r in rows] == ["0.3", "0.7"]
    assert all(r["status"] == "done" and 0 <= float(r["test_top1"]) <= 1 for r in rows)
    assert "Same in every job: " in table and "`kd.gamma=0.1`" in table  # not a column

    # Single runs gathered by links: a key a run did not override shows the value it ran with.
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    (gathered / "preset").symlink_to(tmp_path / "single")
    (gathered / "alpha_0.7").symlink_to(sweep / "1")
    write_tables(gathered)
    rows = {r["job"]: r for r in csv.DictReader(open(gathered / "summary.csv"))}
    assert rows["preset"]["kd.alpha"] == "0.3" and rows["alpha_0.7"]["kd.alpha"] == "0.7"
    assert rows["preset"]["kd.gamma"] == rows["alpha_0.7"]["kd.gamma"] == "0.1"


def test_a_bf16_teacher_gives_float32_targets_close_to_the_float32_teacher(tiny_teacher_run):
    student, teacher = _specs()
    ckpt = _teacher_ckpt(tiny_teacher_run)
    exact = DistillModule(student, teacher, ckpt, teacher_precision="32")
    fast = DistillModule(student, teacher, ckpt, teacher_precision="bf16")
    x = torch.randn(4, 3, 16, 25, 2)
    (stages_32, logits_32), (stages_16, logits_16) = exact.run_teacher(x), fast.run_teacher(x)
    assert logits_16.dtype == torch.float32 and all(s.dtype == torch.float32 for s in stages_16)
    for a, b in zip(stages_32, stages_16):
        assert ((a - b).norm() / a.norm()).item() < 0.02
    assert not torch.equal(logits_32, logits_16)  # it really ran in bf16
    with pytest.raises(ValueError, match="teacher precision 'fp8'"):
        DistillModule(student, teacher, ckpt, teacher_precision="fp8")


def test_feature_mimicry_leaves_out_the_maps_of_empty_person_slots():
    from last_lite.training.losses import feature_mimicry

    torch.manual_seed(0)
    student, teacher = [torch.randn(6, 8, 4, 25)], [torch.randn(6, 8, 4, 25)]
    present = torch.tensor([True, False, True, False, True, True])
    assert torch.allclose(feature_mimicry(student, teacher, present),
                          F.mse_loss(student[0][present], teacher[0][present]))
    everyone = torch.ones(6, dtype=torch.bool)  # all present (NW-UCLA's one person): the plain MSE
    assert torch.equal(feature_mimicry(student, teacher, everyone), F.mse_loss(student[0], teacher[0]))
