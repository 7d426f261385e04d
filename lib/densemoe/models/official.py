"""Official MLoRE checkpoints (YuqiYang213/MLoRE) → our :class:`~densemoe.models.mlore.MLoRE`, strictly.

Like timm's per-family ``checkpoint_filter_fn``, one named function, :func:`convert_mlore_state_dict`, maps
the official layout onto ours (``specs/mlore.md`` §1.14; T = task name, il = scale 0..3, i = expert):

- ``backbone.{patch_embed,blocks,norm}.*`` → ``backbone.vit.*`` (the same timm names).
- ``backbone.pos_embed`` (1, 1+h·w, D) → ``backbone.vit.pos_embed`` (1, h·w, D): slot 0, the ImageNet
  class-token slot that the official forward never adds, is dropped.
- ``backbone.fea_fuse.{il}.*`` → ``decoder.fuse.{il}.*``.
- ``backbone.MLoRE_{1,2}.{il}.X`` → ``decoder.scales.{il}.{0,1}.Y``, with X → Y:

  - ``share_conv`` → ``generic``;
  - ``lora_list_1.{i}.W.{weight,bias}`` (r_i, C, 3, 3) → ``shared_experts.down_{weight,bias}``, cat over i;
  - ``lora_list_1.{i}.M.weight`` (C, r_i, 1, 1) → ``shared_experts.up_weight`` (C, Σr), cat over i;
    ``.M.bias`` → ``shared_experts.up_bias`` (N, C);
  - per task, stacked along the output channels of one grouped conv (task order of our model):
    ``conv1.{T}`` → ``task_proj``, ``conv3.{T}`` → ``task_out``, ``conv2.{T}.{W,M}`` →
    ``task_experts.{down,up}``, ``router_1.{T}.0.{conv1,conv3,conv2}`` → ``routers.{basic_in,basic_out,
    pos_out}``, ``router_1.{T}.1`` (2N+1 rows: ℓ, s, gate) → ``routers.predict``;
  - ``bn_all.{T}``, ``bn.{T}`` → ``expert_norm``, ``out_norm``: one BN(T·C); its step counter is the
    largest of the T counters (it matters only with ``momentum=None``);
  - ``router_1.{T}.0.{ln,ln_sp}`` → ``routers.{basic_norm,pos_norm}`` (T, ·);
  - ``router_1.{T}.0.convsp`` Linear(h·w→1) → ``routers.spatial_{weight,bias}`` (T, h·w), (T,), kept at
    the official grid (our router resamples them when it runs at another grid).
- ``backbone.task_mask.{T}.{0,1,3}`` → ``decoder.fusion.{reduce,norm,mask}`` (stacked over T).
- ``heads.{T}.mt_proj.{0,1}``, ``heads.{T}.linear_pred`` → ``heads.{T}.{proj,norm,pred}``.

Dropped by name, one log line each (:data:`DROPPED`): modules that only some official revisions register and
that the released forward never calls. Anything else unmatched, on either side, is a one-line error listing
the keys; a shape mismatch names the key and both shapes; a checkpoint of another preset or dataset names
what differs (tasks, widths, ranks, token grid). The state dict does not record ``pre_softmax`` or ``topk``:
those come from the preset. ``densemoe convert official CKPT --preset NAME --out PATH`` writes our checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from densemoe.atomic import atomic_write
from densemoe.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: official module prefix → why it is dropped (spec §1.13: the ViT-B release's file and wrapper)
DROPPED = {
    "backbone.q_fuse.": "per-task fuse of a pre-release intermediate-supervision path, never called",
    "backbone.classify_route_1.": "router-feature task classifier of a pre-release revision; no loss uses it",
    "backbone.classify_route_2.": "router-feature task classifier of a pre-release revision; no loss uses it",
    "aux_heads.": "auxiliary heads stored by the ViT-B wrapper; the forward never calls them",
}
#: the released official models, by preset (what an official file is matched against in error messages)
OFFICIAL_PRESETS = ("mlore_vitl16_pascal", "mlore_vitb16_pascal", "mlore_vits16_pascal", "mlore_vitl16_nyud")
#: ``format`` of our checkpoints (``densemoe.train.checkpoint.FORMAT``)
CHECKPOINT_FORMAT = 1
_LAYOUT_KEY = re.compile(r"(module\.)?backbone\.MLoRE_1\.0\.lora_list_1\.0\.W\.weight")


def is_official_mlore(obj: object) -> bool:
    """Whether ``obj`` (a loaded ``checkpoint.pth.tar`` or its state dict) has the official key layout."""
    sd = obj.get("model", obj) if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and any(isinstance(k, str) and _LAYOUT_KEY.fullmatch(k) for k in sd)


def official_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint (or of its ``model`` entry), ``module.`` stripped."""
    sd = obj.get("model", obj)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load an official ``checkpoint.pth.tar`` with ``weights_only=True``; one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"official checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader failure becomes one line
        text = " ".join(str(exc).split())
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:  # a real pickle with Python objects in it, not only tensors and plain data
            raise DataError(
                f"{path} holds Python objects that weights_only loading refuses ({refused.group(1)}); if you "
                f"trust the file and its source, re-save its tensors and convert that: python -c \"import "
                f"torch; c = torch.load('{path}', weights_only=False); "
                f"torch.save({{'model': c['model']}}, 'plain.pth.tar')\""
            ) from exc
        raise DataError(
            f"cannot read {path}: not a complete PyTorch checkpoint (truncated, or another format): "
            f"{type(exc).__name__}: {text.split('. ')[0][:120]}"
        ) from exc
    if not is_official_mlore(obj):
        ours = isinstance(obj, Mapping) and {"preset", "model_args", "model"} <= set(obj)
        hint = "; it is a densemoe checkpoint already, use it as is" if ours else ""
        raise DataError(
            f"{path} is not an official MLoRE checkpoint (no 'backbone.MLoRE_1.*' keys in its 'model'){hint}"
        )
    return official_state_dict(obj)


# ----------------------------------------------------------------------------------------------- layouts


def _dataset_of(tasks: tuple[str, ...]) -> str | None:
    from densemoe.tasks import DATASETS

    return next((d.name for d in DATASETS.values() if set(d.tasks) == set(tasks)), None)


def _official_layout(shapes: Mapping[str, tuple]) -> dict[str, object]:
    """What distinguishes presets, read from the shapes of an official state dict."""
    tasks = tuple(m.group(1) for k in shapes if (m := re.fullmatch(r"heads\.(\w+)\.linear_pred\.weight", k)))
    blocks = {m.group(1) for k in shapes if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))}
    blk = "backbone.MLoRE_1.0."
    return {
        "tasks": tasks,
        "classes": tuple(shapes[f"heads.{t}.linear_pred.weight"][0] for t in tasks),
        "ViT width": shapes.get("backbone.patch_embed.proj.weight", (0,))[0],
        "ViT blocks": len(blocks),
        "tokens": shapes.get("backbone.pos_embed", (0, 1))[1] - 1,
        "C": shapes.get("backbone.fea_fuse.0.weight", (0,))[0],
        "expert ranks": tuple(
            shapes[k][0] for i in range(256) if (k := f"{blk}lora_list_1.{i}.W.weight") in shapes
        ),
        "task rank": shapes.get(f"{blk}conv2.{tasks[0]}.W.weight", (0,))[0] if tasks else 0,
    }


def _our_layout(model: nn.Module) -> dict[str, object]:
    """The same for our model (built on the meta device)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tasks = tuple(getattr(model, "tasks", ()))
    blocks = {m.group(1) for k in shapes if (m := re.match(r"backbone\.vit\.blocks\.(\d+)\.", k))}
    cfg = getattr(model, "cfg", None)
    return {
        "tasks": tasks,
        "classes": tuple(shapes.get(f"heads.{t}.pred.weight", (0,))[0] for t in tasks),
        "ViT width": shapes.get("backbone.vit.patch_embed.proj.weight", (0,))[0],
        "ViT blocks": len(blocks),
        "tokens": shapes.get("backbone.vit.pos_embed", (0, 0))[1],
        "C": shapes.get("decoder.fuse.0.weight", (0,))[0],
        "expert ranks": tuple(cfg.ranks) if cfg else (),
        "task rank": cfg.task_rank if cfg else 0,
    }


def _compare(official: dict, ours: dict) -> list[str]:
    """Human-readable differences, e.g. ``ViT width 768 ≠ 1024``; a task mismatch names the datasets."""
    if official["tasks"] != ours["tasks"]:
        def name(tasks):
            return f"{', '.join(tasks)} ({_dataset_of(tasks) or 'no known dataset'})"

        return [f"tasks {name(official['tasks'])} ≠ {name(ours['tasks'])}"]
    return [f"{k} {official[k]} ≠ {ours[k]}" for k in official if official[k] != ours[k]]


def guess_official_preset(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The released preset (:data:`OFFICIAL_PRESETS`) whose layout an official state dict has, if any."""
    layout = _official_layout({k: tuple(v.shape) for k, v in official_state_dict(state_dict).items()})
    return next((p for p in OFFICIAL_PRESETS if not _compare(layout, _preset_layout(p))), None)


@functools.cache
def _preset_layout(preset: str) -> dict[str, object]:
    return _our_layout(_target(preset))


# ----------------------------------------------------------------------------------------------- mapping


def _target(spec: str | Mapping | nn.Module, **overrides) -> nn.Module:
    """Our model for ``spec`` (preset name, MLoRE constructor args, or a model), built on the meta device."""
    if isinstance(spec, nn.Module):
        return spec
    from densemoe.models import MLoRE, create_model

    with torch.device("meta"):
        if isinstance(spec, str):
            return create_model(spec, **{**overrides, "pretrained": False})
        return MLoRE(**{**dict(spec), **overrides, "pretrained": False})


def _cat(keys: list[str], dim: int = 0) -> tuple[list[str], Callable]:
    return keys, lambda ts: torch.cat(ts, dim=dim)


def _stack(keys: list[str]) -> tuple[list[str], Callable]:
    return keys, lambda ts: torch.stack(ts)


def _per_task_bn(prefix: Callable[[str], str], param: str, tasks: list[str]):
    keys = [f"{prefix(t)}.{param}" for t in tasks]
    if param == "num_batches_tracked":  # one counter for T BNs that always stepped together
        return keys, lambda ts: torch.stack(ts).max()
    return _cat(keys)


def _block_rule(src: str, sub: str, tasks: list[str], experts: int):
    """Official sources of ``decoder.scales.{il}.{m}.<sub>``; ``src`` is ``backbone.MLoRE_{m+1}.{il}.``."""
    first, _, param = sub.partition(".")
    per_task = {"task_proj": "conv1.{}", "task_out": "conv3.{}",
                "expert_norm": "bn_all.{}", "out_norm": "bn.{}"}
    routers = {"basic_in": "0.conv1", "basic_norm": "0.ln", "basic_out": "0.conv3",
               "pos_norm": "0.ln_sp", "pos_out": "0.conv2", "predict": "1"}
    lora = [f"{src}lora_list_1.{i}" for i in range(experts)]
    if first in ("expert_norm", "out_norm"):
        return _per_task_bn(lambda t: src + per_task[first].format(t), param, tasks)
    if first in per_task:
        return _cat([f"{src}{per_task[first].format(t)}.{param}" for t in tasks])
    if first == "generic":
        return [f"{src}share_conv.{param}"], lambda ts: ts[0]
    if first == "task_experts":
        part, _, p = param.partition(".")
        return _cat([f"{src}conv2.{t}.{'W' if part == 'down' else 'M'}.{p}" for t in tasks])
    if sub == "shared_experts.down_weight":
        return _cat([f"{k}.W.weight" for k in lora])
    if sub == "shared_experts.down_bias":
        return _cat([f"{k}.W.bias" for k in lora])
    if sub == "shared_experts.up_weight":
        return [f"{k}.M.weight" for k in lora], lambda ts: torch.cat([t[:, :, 0, 0] for t in ts], dim=1)
    if sub == "shared_experts.up_bias":
        return _stack([f"{k}.M.bias" for k in lora])
    if first == "routers":
        name, _, p = param.partition(".")
        if name in ("spatial_weight", "spatial_bias"):  # Linear(h·w→1) per task, at the official grid
            return _cat([f"{src}router_1.{t}.0.convsp.{name.split('_')[1]}" for t in tasks])
        if name in routers:
            keys = [f"{src}router_1.{t}.{routers[name]}.{p}" for t in tasks]
            return _stack(keys) if name.endswith("norm") else _cat(keys)
    return None


def _rule(key: str, tasks: list[str], experts: int):
    """(official keys, combine) producing our ``key``, or None when the official layout has no source."""
    if key == "backbone.vit.pos_embed":
        return ["backbone.pos_embed"], lambda ts: ts[0][:, 1:].clone()  # drop the class-token slot
    if m := re.fullmatch(r"backbone\.vit\.((patch_embed|blocks|norm)\..+)", key):
        return [f"backbone.{m.group(1)}"], lambda ts: ts[0]
    if m := re.fullmatch(r"decoder\.fuse\.(\d+)\.(\w+)", key):
        return [f"backbone.fea_fuse.{m.group(1)}.{m.group(2)}"], lambda ts: ts[0]
    if m := re.fullmatch(r"decoder\.scales\.(\d+)\.([01])\.(.+)", key):
        return _block_rule(f"backbone.MLoRE_{int(m.group(2)) + 1}.{m.group(1)}.", m.group(3), tasks, experts)
    if m := re.fullmatch(r"decoder\.fusion\.(reduce|norm|mask)\.(\w+)", key):
        index = {"reduce": 0, "norm": 1, "mask": 3}[m.group(1)]
        if m.group(1) == "norm":
            return _per_task_bn(lambda t: f"backbone.task_mask.{t}.1", m.group(2), tasks)
        return _cat([f"backbone.task_mask.{t}.{index}.{m.group(2)}" for t in tasks])
    if m := re.fullmatch(r"heads\.(\w+)\.(proj|norm|pred)\.(\w+)", key):
        part = {"proj": "mt_proj.0", "norm": "mt_proj.1", "pred": "linear_pred"}[m.group(2)]
        return [f"heads.{m.group(1)}.{part}.{m.group(3)}"], lambda ts: ts[0]
    return None


def _listing(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    return f"{keys[:n]}{f' and {len(keys) - n} more' if len(keys) > n else ''}"


def convert_mlore_state_dict(
    state_dict: Mapping[str, torch.Tensor], preset_or_args: str | Mapping | nn.Module, **overrides
) -> dict[str, torch.Tensor]:
    """Our state dict for an official MLoRE state dict (layout in the module docstring), checked strictly.

    ``state_dict``: the official ``checkpoint.pth.tar`` (or its ``'model'`` entry), with or without the DDP
    ``module.`` prefix. ``preset_or_args``: a preset name (``overrides`` are its keyword arguments), our
    :class:`MLoRE` constructor arguments (a checkpoint's ``model_args``), or a built model. Only shapes of
    the target are used (it is built on the meta device). Raises :class:`ConfigError` on any mismatch.
    """
    sd = official_state_dict(state_dict)
    target = _target(preset_or_args, **overrides)
    want = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    name = preset_or_args if isinstance(preset_or_args, str) else getattr(target, "preset", "the model")
    diffs = _compare(_official_layout({k: tuple(v.shape) for k, v in sd.items()}), _our_layout(target))
    if diffs:
        guess = guess_official_preset(sd)
        hint = f"; it looks like preset '{guess}'" if guess and guess != name else ""
        raise ConfigError(f"official checkpoint does not match '{name}': {'; '.join(diffs)}{hint}")

    tasks, experts = list(getattr(target, "tasks", [])), len(_our_layout(target)["expert ranks"])
    out, used, missing, bad = {}, set(), [], []
    for key, shape in want.items():
        rule = _rule(key, tasks, experts)
        if rule is None or any(k not in sd for k in rule[0]):
            missing.append(key if rule is None else f"{key} ← {[k for k in rule[0] if k not in sd][:3]}")
            continue
        sources, combine = rule
        used.update(sources)
        try:
            value = combine([sd[k] for k in sources])
        except RuntimeError:
            bad.append(f"{key} ← {sources[0]}…: pieces {sorted({tuple(sd[k].shape) for k in sources})}")
            continue
        if tuple(value.shape) != shape:
            bad.append(f"{key}: checkpoint {tuple(value.shape)} vs model {shape}")
        out[key] = value
    dropped = {p: [k for k in sd if k.startswith(p)] for p in DROPPED}
    unexpected = set(sd) - used - {k for ks in dropped.values() for k in ks}
    if missing or unexpected:
        raise ConfigError(
            f"official checkpoint does not match '{name}': model keys without a source {_listing(missing)}, "
            f"official keys without a target {_listing(unexpected)}"
        )
    if bad:
        raise ConfigError(f"official checkpoint does not match '{name}': shape mismatch {'; '.join(bad[:8])}")
    for prefix, keys in dropped.items():
        if keys:
            log.info("dropped official %s* (%d tensors): %s", prefix, len(keys), DROPPED[prefix])
    log.debug("dropped the class-token slot of backbone.pos_embed (the forward adds pos_embed[:, 1:])")
    return out


# ----------------------------------------------------------------------------------------------- files


def require_preset(sd: Mapping[str, torch.Tensor], preset: str | None) -> str:
    """``preset``, or a one-line error naming the release ``sd`` looks like (for a missing ``--preset``)."""
    if preset:
        return preset
    guess = guess_official_preset(sd)
    hint = f"this file looks like '{guess}'" if guess else f"released ones: {', '.join(OFFICIAL_PRESETS)}"
    raise ConfigError(f"--preset is required: the preset the checkpoint was trained as ({hint})")


def load_official_model(path: str | os.PathLike, preset: str | None, state_dict: Mapping | None = None,
                        **overrides) -> nn.Module:
    """Our model (``create_model(preset, **overrides)``) with an official checkpoint's weights, strictly.

    ``state_dict``: the file's content when the caller has already read it with
    :func:`read_official_checkpoint`.
    """
    from densemoe.models import create_model

    sd = read_official_checkpoint(path) if state_dict is None else state_dict
    preset = require_preset(sd, preset)
    model = create_model(preset, **{**overrides, "pretrained": False})
    model.load_state_dict(convert_mlore_state_dict(sd, model), strict=True)
    log.info("%s: official MLoRE checkpoint (recognised by its key layout), converted to '%s'", path, preset)
    return model


def convert_official_checkpoint(
    path: str | os.PathLike, preset: str | None, out: str | os.PathLike, model_args: Mapping | None = None
) -> Path:
    """Write our checkpoint ``{format, preset, model_args, model, meta}`` for an official file, atomically."""
    sd = read_official_checkpoint(path)
    preset = require_preset(sd, preset)
    target = _target(preset, **dict(model_args or {}))
    converted = convert_mlore_state_dict(sd, target)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "preset": preset,
        "model_args": dict(target.model_args),
        "model": converted,
        "meta": {"source": "official MLoRE checkpoint", "official_file": os.fspath(path)},
    }
    return atomic_write(out, lambda f: torch.save(ckpt, f))


EXAMPLE_ARGS = """'{"channels": 384}'"""


def _json_args(text: str | None) -> dict:
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-args is not valid JSON ({exc.msg}); e.g. {EXAMPLE_ARGS}") from exc
    if not isinstance(args, dict):
        raise ConfigError(f"--model-args must be a JSON object of model arguments, e.g. {EXAMPLE_ARGS}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def cmd_convert_official(args: argparse.Namespace) -> None:
    out = convert_official_checkpoint(args.checkpoint, args.preset, args.out, _json_args(args.model_args))
    print(f"wrote {out}: a densemoe checkpoint of preset {args.preset}")


def add_convert_parser(subparsers, parents: Iterable[argparse.ArgumentParser] = ()):
    """Register ``densemoe convert official CKPT --preset NAME --out PATH`` on ``subparsers``."""
    convert = subparsers.add_parser("convert", help="convert foreign checkpoints to densemoe checkpoints")
    sub = convert.add_subparsers(dest="convert_command", metavar="SOURCE", required=True)
    parser = sub.add_parser(
        "official", parents=list(parents),
        help="an official MLoRE checkpoint.pth.tar (YuqiYang213/MLoRE) → a densemoe checkpoint",
        description="Convert an official MLoRE checkpoint strictly (every key mapped, dropped modules "
                    "logged) and write a densemoe checkpoint {preset, model_args, model} atomically.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="the official checkpoint.pth.tar")
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"preset it was trained as: {', '.join(OFFICIAL_PRESETS)} for the releases")
    parser.add_argument("--out", required=True, metavar="PATH", help="densemoe checkpoint to write")
    parser.add_argument("--model-args", default=None, metavar="JSON",
                        help="model arguments over the preset's, as a JSON object, for a checkpoint "
                             "trained with a modified official config (e.g. '{\"channels\": 384}')")
    parser.set_defaults(func=cmd_convert_official)
    return parser
