"""The training loop: run folder, exact resume, guards, AMP, frozen encoders, learning."""

import csv
import json

import pytest
import torch
import yaml
from train_helpers import TINY, TINY_MLORE, make_params

from densemoe.models import MLoRE, is_model
from densemoe.models.registry import _MODELS
from densemoe.train import Trainer, TrainingError, load_checkpoint, resolve_experiment, train
from densemoe.train.trainer import param_groups


def _exp(synth_root, tmp_path, name="tiny_pascal", experiments=None, **train_kw):
    return resolve_experiment(make_params(synth_root, experiments, **train_kw), name, runs=tmp_path / "runs")


def test_run_folder_holds_config_checkpoint_logs_metrics_and_routing(synth_root, tmp_path):
    exp = _exp(synth_root, tmp_path, iterations=4, eval_every=2, checkpoint_every=2)
    metrics = train(exp, progress=False)
    run = exp.run_dir
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "mlore_tiny_synth" and config["train"]["iterations"] == 4
    assert config["model_args"]["img_size"] == [32, 32] and config["edge_w"] == 0.95
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [2, 4]
    assert {"lr", "loss", "grad_norm", "aux/load_balance"} | {f"loss/{t}" for t in exp.tasks} <= set(rows[0])
    lr0 = exp.train.lr
    # poly 0.9 per iteration: the row's lr is that of its last iteration (t = 1 and t = 3)
    assert float(rows[0]["lr"]) == pytest.approx(lr0 * (1 - 1 / 4) ** 0.9, rel=1e-4)
    assert float(rows[1]["lr"]) == pytest.approx(lr0 * (1 - 3 / 4) ** 0.9, rel=1e-4)
    assert json.loads((run / "metrics.json").read_text()) == pytest.approx(metrics)
    assert {"semseg/miou", "sal/maxf", "normals/mean_err", "edge/odsf"} <= set(metrics)
    assert [int(r["iteration"]) for r in csv.DictReader((run / "evals.csv").open())] == [2, 4]
    routing = json.loads((run / "routing" / "iter_000004.json").read_text())
    assert routing["images"] == 8 and routing["tasks"] == list(exp.tasks)
    block = routing["blocks"]["scale1.module1"]
    assert len(block["mean_weight"]) == 5 and len(block["mean_weight"][0]) == 6
    assert all(sum(row) == pytest.approx(4.0) for row in block["selected"])  # top-4 of 6 experts
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["preset"] == "mlore_tiny_synth"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "model_args", "meta"} <= set(ckpt)
    assert not list(run.glob(".*tmp"))
    # re-running the finished command trains nothing and returns the same metrics
    assert train(exp, progress=False) == pytest.approx(metrics)
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 4


def test_interrupted_then_resumed_run_ends_with_the_same_weights(synth_root, tmp_path):
    kw = dict(iterations=7, checkpoint_every=2, eval_every=3, log_every=1)
    straight = _exp(synth_root, tmp_path / "a", **kw)
    train(straight, progress=False)

    exp = _exp(synth_root, tmp_path / "b", **kw)

    def stop(iteration, row):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(exp, progress=False, callback=stop)
    assert load_checkpoint(exp.run_dir / "checkpoint.pt")["iteration"] == 4
    train(exp, progress=False)  # the same command again: resumes at iteration 4
    a = load_checkpoint(straight.run_dir / "checkpoint.pt")
    b = load_checkpoint(exp.run_dir / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    hist_a = (straight.run_dir / "history.csv").read_text().splitlines()
    hist_b = (exp.run_dir / "history.csv").read_text().splitlines()
    cut = lambda rows: [r.rsplit(",", 1)[0] for r in rows]  # noqa: E731  (drop sec_per_it)
    assert cut(hist_a) == cut(hist_b)


def test_nan_loss_stops_naming_iteration_and_task_keeping_the_checkpoint(synth_root, tmp_path, monkeypatch):
    from densemoe.train import losses

    calls = {"n": 0}
    real = losses.LOSSES["balanced_bce"]

    def flaky(pred, target, edge_w):
        calls["n"] += 1
        out = real(pred, target, edge_w)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setitem(losses.LOSSES, "balanced_bce", flaky)
    exp = _exp(synth_root, tmp_path, iterations=6, checkpoint_every=2)
    with pytest.raises(TrainingError) as info:
        train(exp, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "loss of task 'edge' is nan at iteration 4" in message
    assert "last good checkpoint" in message and "(iteration 2) is kept" in message
    assert load_checkpoint(exp.run_dir / "checkpoint.pt")["iteration"] == 2


def test_out_of_memory_names_the_setting_to_lower(synth_root, tmp_path, monkeypatch):
    def oom(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "step", oom)
    with pytest.raises(TrainingError, match=r"out of memory during training at iteration 0 .*lower "
                                            r"train.batch_size, or set train.amp: bf16"):
        train(_exp(synth_root, tmp_path), progress=False)


@pytest.mark.parametrize(("model", "amp", "channels_last"), [
    ("mlore_tiny_synth", "bf16", False),
    # MLoRE's blocks .view() a channels_last tensor (mlore_block.py), so channels_last is tested on the
    # baseline decoder until they reshape
    ("baseline_tiny_synth", "bf16", True),
])
def test_bf16_autocast_and_channels_last_train_on_the_cpu(synth_root, tmp_path, model, amp, channels_last):
    experiments = {"amp": {"model": model, "dataset": "synth-pascal", "model_args": TINY_MLORE}}
    exp = _exp(synth_root, tmp_path, "amp", experiments, iterations=2, amp=amp, channels_last=channels_last,
               log_every=1)
    metrics = train(exp, progress=False)
    rows = list(csv.DictReader((exp.run_dir / "history.csv").open()))
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert metrics["semseg/miou"] >= 0


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed(synth_root, tmp_path):
    exp = _exp(synth_root, tmp_path, iterations=2, amp="fp16")
    train(exp, progress=False)
    scaler = load_checkpoint(exp.run_dir / "checkpoint.pt")["scaler"]
    assert scaler and scaler["scale"] > 0


class FrozenEncoder(MLoRE):
    """Decoder-only fine-tuning as FGMoE does it: the encoder frozen and kept in eval mode."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self


def frozen_tiny(**kw):
    return FrozenEncoder(**{"dataset": "synth-pascal", "backbone": "vit_tiny_patch16_384", **kw})


def test_frozen_encoder_stays_frozen_and_in_eval_mode(synth_root, tmp_path, monkeypatch):
    monkeypatch.setitem(_MODELS, "frozen_tiny", frozen_tiny)
    experiments = {"frozen": {"model": "frozen_tiny", "dataset": "synth-pascal", "model_args": TINY_MLORE}}
    exp = _exp(synth_root, tmp_path, "frozen", experiments, iterations=2, checkpoint_every=1)
    trainer = Trainer(exp, progress=False)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(trained)
    modes = []
    trainer.callback = lambda it, row: modes.append((trainer.model.training, trainer.model.backbone.training))
    trainer.run()
    assert modes == [(True, False)] * 2
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_param_groups_can_exempt_norms_biases_and_embeddings():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1))
    model[2].requires_grad_(False)
    one = param_groups(model, 1e-6)
    assert len(one) == 1 and len(one[0]["params"]) == 4  # the frozen conv is left out
    decay, no_decay = param_groups(model, 1e-6, decay_norms_and_biases=False)
    assert len(decay["params"]) == 1 and decay["params"][0] is model[0].weight
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


# FGMoE with DeGMix's two mixer stages (the smoke preset keeps one, for CPU speed; one learns too slowly here)
MODELS = [("mlore_tiny_synth", TINY_MLORE), ("fgmoe_tiny_synth", dict(TINY, mixer_depth=2))]


@pytest.mark.parametrize("dataset", ["synth-pascal", "synth-nyud"])
@pytest.mark.parametrize(("model", "args"), MODELS, ids=[m for m, _ in MODELS])
def test_tiny_models_learn_on_synthetic_data(synth_root, tmp_path, model, args, dataset):
    if not is_model(model):
        pytest.skip(f"{model} is not registered yet")
    experiments = {"learn": {"model": model, "dataset": dataset, "model_args": args}}
    exp = _exp(synth_root, tmp_path, "learn", experiments, iterations=30, log_every=30, lr=3.0e-3)
    trainer = Trainer(exp, progress=False)
    untrained = trainer.evaluate()
    trained = trainer.run()
    # 30 iterations on 16 images (FGMoE: its random encoder frozen): semantics and normals move first
    assert trained["semseg/miou"] > untrained["semseg/miou"] + 2
    assert trained["normals/mean_err"] < untrained["normals/mean_err"] - 5
