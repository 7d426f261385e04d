"""Official MLoRE checkpoints: strict conversion, and our forward equal to the official code's.

The fixtures under ``tests/fixtures/official_mlore/`` were written by
``tests/fixtures/make_official_mlore.py`` from the official code itself (commit in each ``config.yml``): tiny
random models, their ``checkpoint.pth.tar`` and their outputs in eval mode. No official code is needed here.
Per task we compare
max |ours − official| / max |official|: ≤ 1e-9 in float64, ≤ 1e-4 in float32.
"""

import argparse
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from densemoe.errors import ConfigError, DataError
from densemoe.models import create_model
from densemoe.models.official import (
    DROPPED,
    add_convert_parser,
    convert_mlore_state_dict,
    guess_official_preset,
    is_official_mlore,
    load_official_model,
    read_official_checkpoint,
    require_preset,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official_mlore"
#: fixture case -> the preset of the official config it shrinks (pascal_vitBp16 / nyud_vitLp16)
PRESETS = {"pascal": "mlore_vitb16_pascal", "nyud": "mlore_vitl16_nyud"}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def _case(name: str):
    folder = FIXTURES / name
    cfg = yaml.safe_load((folder / "config.yml").read_text())
    args = dict(  # the tiny sizes; top-k and pre_softmax come from the preset, as for a real checkpoint
        backbone_args={k: cfg["vit"][k] for k in ("embed_dim", "depth", "num_heads")},
        img_size=tuple(cfg["scale"]),
        channels=cfg["final_embed_dim"],
        ranks=tuple(cfg["rank_list"]),
        task_rank=cfg["spe_rank"],
    )
    return folder, cfg, args, torch.load(folder / "data.pt", weights_only=True)


def _model(name: str, dtype=torch.float32, sd=None):
    folder, _, args, _ = _case(name)
    sd = read_official_checkpoint(folder / "checkpoint.pth.tar") if sd is None else sd
    model = create_model(PRESETS[name], **args)
    model.load_state_dict(convert_mlore_state_dict(sd, PRESETS[name], **args))
    return model.to(dtype).eval()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _max_rel(ours: torch.Tensor, official: torch.Tensor) -> float:
    return ((ours.double() - official.double()).abs().max() / official.double().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_equals_official(name, dtype):
    _, cfg, _, data = _case(name)
    assert create_model(PRESETS[name], **_case(name)[2]).cfg.pre_softmax_topk == cfg["pre_softmax"]
    model = _model(name, dtype)
    key = "float64" if dtype == torch.float64 else "float32"
    with torch.no_grad():
        plain = model(data["input"].to(dtype))
        routing = model.routing_stats()
        merged = model.reparameterize()(data["input"].to(dtype))
    assert list(plain) == cfg["tasks"]
    for task in cfg["tasks"]:
        assert plain[task].dtype == dtype
        assert _max_rel(plain[task], data[key][task]) <= TOLERANCE[dtype], task
        assert _max_rel(merged[task], data[key][task]) <= TOLERANCE[dtype], task
        if cfg["repara"]:  # the official re-parameterised model (MLoRE_repara after reparameter())
            assert _max_rel(merged[task], data[f"repara_{key}"][task]) <= TOLERANCE[dtype], task
            assert _max_rel(plain[task], data[f"repara_{key}"][task]) <= TOLERANCE[dtype], task
    if dtype == torch.float64:  # official route_{1,2}_prob: (stage, scale, B, T, N)
        for stage in range(2):
            for scale in range(4):
                torch.testing.assert_close(
                    routing[f"scale{scale + 1}.module{stage + 1}"], data["routing_float64"][stage, scale]
                )


def test_converted_model_runs_at_another_grid():
    model = _model("nyud")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 80))  # 4×5 tokens; the official model is fixed to 3×4
    assert out["semseg"].shape == (1, 40, 64, 80)


def test_unused_official_modules_are_dropped_by_name(caplog):
    _, _, args, _ = _case("pascal")
    sd = read_official_checkpoint(FIXTURES / "pascal" / "checkpoint.pth.tar")  # the ViT-B release's layout
    with caplog.at_level(logging.INFO, logger="densemoe.models.official"):
        converted = convert_mlore_state_dict(sd, PRESETS["pascal"], **args)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped official")]
    assert len(lines) == len(DROPPED) == 4
    assert all(any(prefix in line for line in lines) for prefix in DROPPED)

    vitl = {k: v for k, v in sd.items() if not any(k.startswith(p) for p in DROPPED)}  # ViT-L's layout
    assert len(vitl) < len(sd)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="densemoe.models.official"):
        again = convert_mlore_state_dict(vitl, PRESETS["pascal"], **args)
    assert not [r for r in caplog.records if r.getMessage().startswith("dropped official")]
    assert _same(again, converted)


def test_prefix_layout_and_recognition():
    ckpt = torch.load(FIXTURES / "nyud" / "checkpoint.pth.tar", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "iter_count"} <= set(ckpt)
    assert all(k.startswith("module.") for k in ckpt["model"])
    _, _, args, _ = _case("nyud")
    plain = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    a = convert_mlore_state_dict(ckpt, PRESETS["nyud"], **args)  # the whole file, prefixed
    b = convert_mlore_state_dict(plain, PRESETS["nyud"], **args)  # an unprefixed state dict
    assert _same(a, b)
    assert a["backbone.vit.pos_embed"].shape[1] == plain["backbone.pos_embed"].shape[1] - 1 == 12
    assert a["decoder.scales.0.0.routers.spatial_weight"].shape == (4, 12)  # official 3×4 grid, per task

    assert is_official_mlore(ckpt) and is_official_mlore(ckpt["model"]) and is_official_mlore(plain)
    ours = create_model(PRESETS["nyud"], **args)
    assert not is_official_mlore(ours.state_dict())
    assert not is_official_mlore({"preset": "x", "model_args": {}, "model": ours.state_dict()})
    assert not is_official_mlore([1, 2]) and not is_official_mlore({"model": 3})


#: the released configurations (specs/mlore.md §1.11): D, blocks, token grid, C, ranks, task rank, head sizes
RELEASES = {
    "mlore_vitl16_pascal": (1024, 24, 32 * 32, 452, range(16, 129, 8), 72, dict(semseg=21, human_parts=7,
                                                                                 sal=2, normals=3, edge=1)),
    "mlore_vitb16_pascal": (768, 12, 32 * 32, 640, range(16, 129, 8), 64, dict(semseg=21, human_parts=7,
                                                                               sal=2, normals=3, edge=1)),
    "mlore_vits16_pascal": (384, 12, 32 * 32, 192, range(8, 65, 4), 32, dict(semseg=21, human_parts=7,
                                                                             sal=2, normals=3, edge=1)),
    "mlore_vitl16_nyud": (1024, 24, 28 * 36, 768, range(16, 241, 16), 16, dict(semseg=40, depth=1,
                                                                               normals=3, edge=1)),
}


@pytest.mark.parametrize("preset", list(RELEASES))
def test_release_layouts_match_our_presets(preset):
    """A released file's layout (meta tensors of the keys that tell presets apart) names its preset."""
    D, depth, tokens, C, ranks, task_rank, heads = RELEASES[preset]
    with torch.device("meta"):
        sd = {"module.backbone.pos_embed": torch.empty(1, tokens + 1, D),
              "module.backbone.patch_embed.proj.weight": torch.empty(D, 3, 16, 16),
              "module.backbone.fea_fuse.0.weight": torch.empty(C, D, 1, 1)}
        sd |= {f"module.backbone.blocks.{b}.norm1.weight": torch.empty(D) for b in range(depth)}
        sd |= {f"module.backbone.MLoRE_1.0.lora_list_1.{i}.W.weight": torch.empty(r, C, 3, 3)
               for i, r in enumerate(ranks)}
        sd |= {f"module.backbone.MLoRE_1.0.conv2.{t}.W.weight": torch.empty(task_rank, C, 3, 3)
               for t in heads}
        sd |= {f"module.heads.{t}.linear_pred.weight": torch.empty(k, C, 1, 1) for t, k in heads.items()}
    assert is_official_mlore({"model": sd})
    assert guess_official_preset(sd) == preset
    with pytest.raises(ConfigError, match="--preset is required.*looks like '" + preset):
        require_preset(sd, None)
    other = next(p for p in RELEASES if p != preset)
    with pytest.raises(ConfigError, match=f"does not match '{other}': .*; it looks like preset '{preset}'"):
        convert_mlore_state_dict(sd, other)


def test_another_dataset_or_size_names_the_mismatch():
    nyud = read_official_checkpoint(FIXTURES / "nyud" / "checkpoint.pth.tar")
    _, _, pascal_args, _ = _case("pascal")
    with pytest.raises(ConfigError, match=r"semseg, depth, normals, edge \(nyud-v2\).*\(pascal-context\)"):
        convert_mlore_state_dict(nyud, PRESETS["pascal"], **pascal_args)
    pascal = read_official_checkpoint(FIXTURES / "pascal" / "checkpoint.pth.tar")
    with pytest.raises(ConfigError, match=r"C 12 ≠ 16.*expert ranks"):
        convert_mlore_state_dict(
            pascal, PRESETS["pascal"], **{**pascal_args, "channels": 16, "ranks": (4,) * 15}
        )
    with pytest.raises(ConfigError, match=r"tokens 4 ≠ 9"):
        convert_mlore_state_dict(pascal, PRESETS["pascal"], **{**pascal_args, "img_size": (48, 48)})
    vit = dict(embed_dim=32, depth=8, num_heads=2)
    with pytest.raises(ConfigError, match=r"ViT width 16 ≠ 32.*ViT blocks 4 ≠ 8"):
        convert_mlore_state_dict(pascal, PRESETS["pascal"], **{**pascal_args, "backbone_args": vit})


def test_unmatched_keys_and_shapes_are_listed():
    sd = read_official_checkpoint(FIXTURES / "nyud" / "checkpoint.pth.tar")
    _, _, args, _ = _case("nyud")
    extra = {**sd, "backbone.MLoRE_1.0.lora_list_1.0.virt_conv.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"keys without a target \['backbone.MLoRE_1.0.lora_list_1.0"):
        convert_mlore_state_dict(extra, PRESETS["nyud"], **args)
    fewer = {k: v for k, v in sd.items() if k != "backbone.MLoRE_2.3.bn.depth.running_var"}
    with pytest.raises(ConfigError, match=r"scales.3.1.out_norm.running_var ← \['backbone.MLoRE_2.3.bn"):
        convert_mlore_state_dict(fewer, PRESETS["nyud"], **args)
    wrong = {**sd, "heads.edge.mt_proj.0.weight": torch.zeros(8, 8, 1, 1)}
    with pytest.raises(ConfigError, match=r"proj.weight: checkpoint \(8, 8, 1, 1\) vs model \(8, 8, 3, 3"):
        convert_mlore_state_dict(wrong, PRESETS["nyud"], **args)
    uneven = {**sd, "backbone.MLoRE_1.0.conv1.depth.weight": torch.zeros(8, 7, 1, 1)}
    with pytest.raises(ConfigError, match=r"shape mismatch decoder.scales.0.0.task_proj.weight ← .*pieces"):
        convert_mlore_state_dict(uneven, PRESETS["nyud"], **args)


def _convert(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="densemoe")
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_cli_round_trip(tmp_path, capsys):
    _, cfg, args, data = _case("nyud")
    out = tmp_path / "sub" / "nyud.pt"
    _convert(["convert", "official", str(FIXTURES / "nyud" / "checkpoint.pth.tar"), "--preset",
              PRESETS["nyud"], "--model-args", json.dumps(args), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["nyud.pt"]  # no temporary file left
    ckpt = torch.load(out, weights_only=True)
    assert {"preset", "model_args", "model"} <= set(ckpt) and ckpt["preset"] == PRESETS["nyud"]
    model = create_model(ckpt["preset"], **ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    official = read_official_checkpoint(FIXTURES / "nyud" / "checkpoint.pth.tar")
    again = convert_mlore_state_dict(official, ckpt["model_args"])  # from the stored constructor args
    assert _same(again, ckpt["model"])
    direct = load_official_model(FIXTURES / "nyud" / "checkpoint.pth.tar", PRESETS["nyud"], **args)
    with torch.no_grad():
        preds, preds_direct = model.eval()(data["input"].float()), direct.eval()(data["input"].float())
    for task in cfg["tasks"]:
        assert _max_rel(preds[task], data["float32"][task]) <= 1e-4
        assert torch.equal(preds[task], preds_direct[task])


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    good = FIXTURES / "nyud" / "checkpoint.pth.tar"
    out = tmp_path / "out.pt"
    _, _, args, _ = _case("nyud")

    def convert(path, *extra):
        with pytest.raises((ConfigError, DataError)) as info:
            _convert(["convert", "official", str(path), "--out", str(out), *extra])
        assert "\n" not in str(info.value)
        assert not any(tmp_path.glob("*out.pt*"))
        return str(info.value)

    assert "--preset is required" in convert(good)
    assert "does not match 'mlore_vitb16_pascal'" in convert(good, "--preset", "mlore_vitb16_pascal")
    assert "not valid JSON" in convert(good, "--preset", PRESETS["nyud"], "--model-args", "{img")
    assert "does not exist" in convert(tmp_path / "missing.pth.tar", "--preset", PRESETS["nyud"])
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in convert(truncated, "--preset", PRESETS["nyud"])
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    assert "not a complete PyTorch checkpoint" in convert(text, "--preset", PRESETS["nyud"])
    pickled = tmp_path / "pickled.pth.tar"
    state = torch.load(good, weights_only=True)["model"]
    torch.save({"model": state, "args": argparse.Namespace(lr=1)}, pickled)  # as argparse-era code saved
    message = convert(pickled, "--preset", PRESETS["nyud"])
    assert "weights_only" in message and "if you trust the file" in message and "Namespace" in message
    ours = tmp_path / "ours.pt"
    _convert(["convert", "official", str(good), "--preset", PRESETS["nyud"], "--model-args", json.dumps(args),
              "--out", str(ours)])
    assert "densemoe checkpoint already" in convert(ours, "--preset", PRESETS["nyud"])
    with pytest.raises(DataError, match="not an official MLoRE checkpoint"):
        torch.save({"model": {"weight": torch.zeros(1)}}, text)
        read_official_checkpoint(text)


def test_evaluate_path_recognises_an_official_file(capsys):
    from densemoe.cli import main
    from densemoe.train.commands import open_checkpoint

    folder, _, args, data = _case("nyud")
    model, config, model_args = open_checkpoint(folder / "checkpoint.pth.tar", PRESETS["nyud"], args)
    assert config == {} and model_args["dataset"] == "nyud-v2"
    assert _same(model.state_dict(), _model("nyud").state_dict())
    code = main(["evaluate", "--checkpoint", str(folder / "checkpoint.pth.tar"), "--root", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "--preset is required" in err and err.count("\n") == 1
