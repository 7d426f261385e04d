"""FGMoE presets: the likely paper settings and every ablation switch, as arguments of :class:`FGMoE`.

Names are ``fgmoe_<backbone>_<dataset>[_<ablation>]`` (STYLE §6). The paper's settings are unknown
(``specs/fgmoe.md`` §1.4 f–g). inferred: ViT-B/16 and ViT-L/16 (AugReg in21k→in1k, 384) on PASCAL-Context
and ViT-L/16 on NYUD-v2, the settings of the MoE baselines it compares with (TaskExpert, MLoRE); λ_lb as
MLoRE's configs. The ablations the paper almost certainly reports (spec §1.4 g) are registered for
``vitb16_pascal`` (inferred: MLoRE's ablation setting) and for the CPU smoke base ``tiny_synth``.
``create_model`` keywords override a preset.
"""

from __future__ import annotations

from densemoe.models.fgmoe import FGMoE
from densemoe.models.registry import register_alias, register_model

_VIT = "vit_{}_patch16_384.augreg_in21k_ft_in1k"

#: base name -> (docstring, FGMoE arguments)
BASES: dict[str, tuple[str, dict]] = {
    "vitb16_pascal": (
        "ViT-B/16, PASCAL-Context (inferred setting; λ_lb 3e-4 as MLoRE PASCAL)",
        dict(dataset="pascal-context", backbone=_VIT.format("base"), load_balance_weight=3e-4),
    ),
    "vitl16_pascal": (
        "ViT-L/16, PASCAL-Context (inferred setting; λ_lb 3e-4 as MLoRE PASCAL)",
        dict(dataset="pascal-context", backbone=_VIT.format("large"), load_balance_weight=3e-4),
    ),
    "vitl16_nyud": (
        "ViT-L/16, NYUD-v2 (inferred setting; λ_lb 5e-4 as MLoRE NYUD)",
        dict(dataset="nyud-v2", backbone=_VIT.format("large"), load_balance_weight=5e-4),
    ),
    "tiny_synth": (
        "CPU smoke base: timm ViT-Tiny/16 (random init, frozen) on SynthScenes (synth-pascal, 128×128), "
        "C = 64, one mixer stage (torchvision's CPU deformable convolution made depth 2 3.6× slower per step "
        "than MLoRE's tiny preset, measured)",
        dict(dataset="synth-pascal", backbone="vit_tiny_patch16_384", channels=64, mixer_depth=1,
             load_balance_weight=3e-4),
    ),
}

#: suffix -> (what it ablates, arguments); the defaults are N_r = 8, k = 2, N_s = 1, N_g = 8, k_g = 2.
ABLATIONS: dict[str, tuple[str, dict]] = {
    "coarse": (
        "coarse experts, equal parameters: 4 experts of hidden rC/4, top-1 (same total and active hidden)",
        dict(routed_experts=4, top_k=1),
    ),
    "dense_mlp": (
        "no routing: the dense task MLP C→rC→C (N_r = 1) plus the shared expert",
        dict(routed_experts=1, top_k=1),
    ),
    "no_shared": ("without the per-task shared experts (N_s = 0)", dict(shared_experts=0)),
    "no_global": ("without the Global MoE", dict(global_experts=0)),
    "no_task_embed": ("global router on the feature only (no task embedding)", dict(task_embedding_dim=0)),
    "full_ft": ("full fine-tuning (encoder trained too) instead of decoder-only", dict(finetune="full")),
    "switch_lb": (
        "Switch-style load balancing (λ = 1e-2) instead of cv²",
        dict(load_balance="switch", load_balance_weight=1e-2),
    ),
    "no_lb": ("without load balancing", dict(load_balance_weight=0.0)),
    "mixer_relative": (
        "deformable offsets from the features only (not DeGMix's absolute positions)",
        dict(mixer_offsets="relative"),
    ),
}
for _n in (4, 16, 32):  # inferred: k/N_r kept at 1/4 while N_r is swept
    ABLATIONS[f"experts{_n}"] = (f"N_r = {_n} experts, k = {_n // 4}", dict(routed_experts=_n, top_k=_n // 4))
for _k in (1, 4, 8):
    ABLATIONS[f"top{_k}"] = (f"top-k = {_k} of N_r = 8", dict(top_k=_k))


def _register(name: str, args: dict, doc: str) -> None:
    def preset(**kwargs) -> FGMoE:
        return FGMoE(**{**args, **kwargs})

    preset.__name__ = preset.__qualname__ = name
    preset.__doc__ = doc
    register_model(preset)


@register_model
def fgmoe(**kwargs) -> FGMoE:
    """FGMoE with the library defaults (ViT-B/16 PASCAL-Context, inferred); pass tasks, backbone, … ."""
    return FGMoE(**kwargs)


for _base, (_doc, _args) in BASES.items():
    _register(f"fgmoe_{_base}", _args, f"FGMoE, {_doc}.")
    if _base in ("vitb16_pascal", "tiny_synth"):
        for _suffix, (_what, _extra) in ABLATIONS.items():
            _register(f"fgmoe_{_base}_{_suffix}", {**_args, **_extra}, f"FGMoE ablation, {_what}; {_doc}.")

for _old in ("vitb_pascal", "vitl_pascal", "vitl_nyud"):  # the names issue #6 used
    register_alias(f"fgmoe_{_old}", f"fgmoe_{_old.replace('_', '16_', 1)}")
