"""FGMoE: frozen ViT → Feature Aggregator → Global MoE ∥ per-task Deformable Mixer + Task MoE → ⊕ → heads.

Paper: Yangyang Xu, Xi Ye, Duo Su, "Multi-Task Dense Prediction Fine-Tuning with Mixture of Fine-Grained
Experts", ACM Multimedia 2025, arXiv:2507.19077 (https://arxiv.org/abs/2507.19077). No code was released and
we hold only the abstract and the Figure-1 caption (``specs/fgmoe.md`` §1; the README's FGMoE section is the
README section). Each line below says where a part comes from — [A] abstract, [F] Figure-1 caption,
[I] inferred (with its default; the code marks the same choices with ``inferred:`` comments):

[F] a Transformer encoder extracts the features; [I] a timm ViT-B/16 or ViT-L/16 (the backbones of the
    MoE baselines it is compared with), tapped as MLoRE is (3 blocks d/4, d/2, 3d/4 + the normed last).
[A] only the decoder is trained; [I] the encoder has ``requires_grad=False`` and stays in eval mode even after
    ``model.train()`` (``finetune="full"`` is the ablation that trains it).
[F] a Feature Aggregator with "Up" (up-sampling) and "Concat"; [I] DeGMix's FeatConv: per tap 2× conv3×3
    D→C/2, ×4 bilinear, concat, 2× conv3×3 → C = 256 (``fgmoe_decoder.py``).
[F] the aggregated feature goes to a Global MoE block and to per-task Deformable Mixers; [I] DeGMix's
    DefMixer (depth 2, channel-split deformable 1×1 conv from ``torchvision.ops``).
[F] each Deformable Mixer is followed by its Task-specific MoE.
[A] intra-task experts partition the MLP's intermediate hidden dimension (parameter-efficient); [I] a dense
    task MLP C→rC→C (r = 4) cut into N_r = 8 routed experts, per-token top-k = 2 (``fgmoe_moe.py``).
[A] shared experts consolidate what is common across contexts of the same task; [I] N_s = 1 always-on expert
    per task, hidden rC/8, added to the routed experts (DeepSeekMoE "shared expert isolation").
[A] a global expert transfers knowledge across tasks, routed on the input feature *and* the task;
    [F] "Global MoEs", plural; [I] N_g = 8 experts (hidden rC/8), top-2, router softmax(W_g[x; e_t]) with a
    learned task embedding (d_e = 64), run once per task.
[F] each task MoE's output ⊕ (tensor addition) the Global MoE's shared features gives the task prediction;
    [I] through DeGMix's head (conv3×3-BN-ReLU C→D/8, 1×1), bilinear to the input size.
[I] load balancing per router: MLoRE's cv² of the importance (weight 3e-4 PASCAL, 5e-4 NYUD, as MLoRE's
    configs), or a Switch-style loss; the trainer adds the ``aux_losses()``.
[A] fewer parameters than MoE baselines, better results on NYUD-v2 and PASCAL-Context: not reproduced here;
    the README's FGMoE section measures trainable vs total parameters next to MLoRE's.

Every [I] choice is a :class:`FGMoEConfig` field, so the ablations (coarse experts, no shared experts, no
global MoE, N_r / k sweeps, full fine-tuning) are presets (``fgmoe_presets.py``), not classes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from densemoe.errors import ConfigError, unknown
from densemoe.models.backbone import DROP_PATH_RATE, create_backbone
from densemoe.models.fgmoe_decoder import OFFSETS, DeformableMixers, FeatureAggregator, build_bottleneck_heads
from densemoe.models.fgmoe_moe import DISPATCH, LOAD_BALANCE, GlobalMoE, TaskMoE, balance_terms
from densemoe.models.mlore import resolve_tasks
from densemoe.models.strict import StrictLoading
from densemoe.tasks import dataset_info

FINETUNE = ("decoder", "full")


@dataclass(frozen=True)
class FGMoEConfig:
    """FGMoE's decoder hyper-parameters. Every default is inferred (spec §1.3–1.4) unless marked [A]/[F]."""

    channels: int = 256  # C, decoder width (DeGMix ViT head)
    aggregator_channels: int | None = None  # per-tap width before "Concat"; None = C/2 (DeGMix: 128)
    mixer_depth: int = 2  # stages of each Deformable Mixer (DeGMix DefMixer depth)
    mixer_offsets: str = "degmix"  # "degmix": offsets from absolute positions (DeGMix code); "relative"
    mlp_ratio: int = 4  # r: the dense task MLP C→rC→C whose hidden dim is partitioned [A]
    routed_experts: int = 8  # N_r fine-grained routed experts per task, hidden rC/N_r; 1 = the dense MLP
    top_k: int = 2  # k, routed experts per token and task (active hidden k·rC/N_r = rC/4)
    shared_experts: int = 1  # N_s always-on shared experts per task [A]; 0 = ablation
    shared_hidden: int | None = None  # hidden of each shared expert; None = rC/8 (fixed when N_r is swept)
    global_experts: int = 8  # N_g experts of the Global MoE [A, F]; 0 = no global MoE
    global_top_k: int = 2  # k_g
    global_hidden: int | None = None  # hidden of each global expert; None = rC/N_g
    global_shared_experts: int = 0  # always-on experts in the global pool ("Global MoEs" [F] may mean it)
    task_embedding_dim: int = 64  # d_e of e_t in the global router [A: "task requirements"]; 0 = feature only
    pre_softmax_topk: bool = False  # False: softmax then keep top-k, no renormalising; True: renormalised
    noisy_gating: bool = False  # Shazeer-style noise on the router logits in training
    load_balance: str = "cv2"  # "cv2" (MLoRE's, per router) or "switch" (N·Σ f_i P_i)
    load_balance_weight: float = 3e-4  # λ: MLoRE's PASCAL value for cv² (5e-4 NYUD); ~1e-2 for "switch"
    dispatch: str = "dense"  # routed experts computed "dense" (masked) or "sparse" (gathered); same result
    head_channels: int | None = None  # bottleneck of each task head; None = D/8 (DeGMix)
    finetune: str = "decoder"  # [A] "decoder": frozen encoder; "full": train everything (ablation)

    @property
    def hidden(self) -> int:
        """rC, the dense task MLP's hidden size."""
        return self.mlp_ratio * self.channels

    def check(self) -> None:
        """One-line :class:`ConfigError` for an impossible setting."""
        for name, value, valid in (
            ("mixer_offsets", self.mixer_offsets, OFFSETS),
            ("load_balance", self.load_balance, LOAD_BALANCE),
            ("dispatch", self.dispatch, DISPATCH),
            ("finetune", self.finetune, FINETUNE),
        ):
            if value not in valid:
                raise unknown(f"FGMoE {name}", value, valid)
        if self.routed_experts < 1 or not 1 <= self.top_k <= self.routed_experts:
            raise ConfigError(
                f"FGMoE needs routed_experts ≥ 1 and 1 ≤ top_k ≤ routed_experts, "
                f"got routed_experts={self.routed_experts}, top_k={self.top_k}"
            )
        if self.global_experts and not 1 <= self.global_top_k <= self.global_experts:
            raise ConfigError(f"FGMoE global_top_k={self.global_top_k} not in 1..{self.global_experts}")
        if self.hidden % self.routed_experts:
            raise ConfigError(
                f"FGMoE cannot split the hidden size r·C = {self.hidden} into "
                f"{self.routed_experts} equal experts"
            )
        sizes = (self.channels, self.mlp_ratio, self.mixer_depth)
        extras = (
            self.shared_experts,
            self.global_experts,
            self.global_shared_experts,
            self.task_embedding_dim,
        )
        if min(sizes) < 1 or min(extras) < 0:
            raise ConfigError("FGMoE sizes must be positive and expert counts non-negative")


class FGMoEDecoder(nn.Module):
    """Taps → X (aggregator) → G_t (global MoE) ∥ y_t (mixer + task MoE) → Z_t = y_t ⊕ G_t (B, T, C, H, W)."""

    def __init__(self, cfg: FGMoEConfig, tasks: int, in_channels: list[int], scale: int):
        super().__init__()
        C, rC, T = cfg.channels, cfg.hidden, tasks
        self.tasks = tasks
        self.aggregator = FeatureAggregator(in_channels, cfg.aggregator_channels or C // 2, C, scale)
        self.global_moe = None
        if cfg.global_experts:
            self.global_moe = GlobalMoE(
                T, C, cfg.global_hidden or max(1, rC // cfg.global_experts), cfg.global_experts,
                cfg.global_top_k, cfg.task_embedding_dim, cfg.global_shared_experts, cfg.pre_softmax_topk,
                cfg.noisy_gating, cfg.dispatch,
            )  # fmt: skip
        self.mixers = DeformableMixers(T, C, cfg.mixer_depth, cfg.mixer_offsets)
        self.task_moe = TaskMoE(
            T, C, rC // cfg.routed_experts, cfg.routed_experts, cfg.top_k, cfg.shared_experts,
            cfg.shared_hidden or max(1, rC // 8), cfg.pre_softmax_topk, cfg.noisy_gating, cfg.dispatch,
        )  # fmt: skip
        self.grid: tuple[int, int, int] | None = None  # (B, H, W) of the last forward

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.aggregator(feats)  # X, (B, C, H, W)
        B, C, H, W = x.shape
        T, M = self.tasks, B * H * W
        self.grid = (B, H, W)
        x_t = self.mixers(x).view(B, T, C, H * W)  # X_t, per-task deformable mixers
        tokens = x_t.permute(1, 0, 3, 2).reshape(T, M, C)  # (T, B*H*W, C)
        z = self.task_moe(tokens)  # y_t, (T, M, C)
        if self.global_moe is not None:
            shared = x.view(B, C, H * W).transpose(1, 2).reshape(1, M, C)  # (1, M, C)
            z = z + self.global_moe(shared)  # Z_t = y_t ⊕ G_t  [F]
        return z.view(T, B, H, W, C).permute(1, 0, 4, 2, 3)  # (B, T, C, H, W)

    def routers(self) -> dict[str, nn.Module]:
        """The routed MoEs by routing-stats key: intra-task (N_r experts per task) and global (N_g)."""
        out = {"intra_task": self.task_moe} if self.task_moe.router is not None else {}
        return out | ({"global": self.global_moe} if self.global_moe is not None else {})


class FGMoE(StrictLoading):
    """Backbone (frozen by default) → :class:`FGMoEDecoder` → per-task heads; ``{task: (B, K_t, H, W)}``.

    Args: ``tasks`` (names, TaskSpecs or None = all of ``dataset``), ``dataset``, ``backbone`` (timm name),
    ``img_size``, ``pretrained`` (bool or weights file), ``backbone_args`` (timm kwargs), ``drop_path_rate``
    (acts only when ``finetune="full"``: a frozen encoder is always in eval mode), ``taps`` (1-based blocks),
    and the :class:`FGMoEConfig` fields as keywords.
    """

    def __init__(
        self,
        tasks=None,
        dataset: str = "pascal-context",
        backbone: str = "vit_base_patch16_384",
        img_size: tuple[int, int] | None = None,
        pretrained: bool | str = False,
        backbone_args: dict | None = None,
        drop_path_rate: float = DROP_PATH_RATE,
        taps: tuple[int, ...] | None = None,
        **decoder_args,
    ):
        super().__init__()
        valid = {f.name for f in fields(FGMoEConfig)}
        for key in decoder_args:
            if key not in valid:
                own = {"tasks", "dataset", "backbone", "img_size", "pretrained", "backbone_args", "taps"}
                raise unknown("FGMoE argument", key, valid | own | {"drop_path_rate"})
        self.cfg = FGMoEConfig(**decoder_args)
        self.cfg.check()
        self.tasks = resolve_tasks(tasks, dataset)
        self.img_size = tuple(img_size or dataset_info(dataset).train_size)
        bb_args = dict(backbone_args or {}) | ({"taps": tuple(taps)} if taps is not None else {})
        self.backbone = create_backbone(backbone, self.img_size, pretrained, drop_path_rate, **bb_args)
        self.patch_size = self.backbone.patch_size
        self._check_size(self.img_size)
        scale = max(1, self.backbone.reduction // 4)  # 1/16 → 1/4 of the input ("Up" [F], ×4 in DeGMix)
        self.decoder = FGMoEDecoder(self.cfg, len(self.tasks), self.backbone.channels, scale)
        head = self.cfg.head_channels or max(1, self.backbone.channels[-1] // 8)
        self.heads = build_bottleneck_heads(self.tasks, self.cfg.channels, head)
        self.pretrained_cfg = self.backbone.pretrained_cfg
        self.model_args = dict(
            tasks=list(self.tasks), dataset=dataset, backbone=backbone, img_size=self.img_size,
            backbone_args=backbone_args, drop_path_rate=drop_path_rate, taps=taps,
            **{k: v for k, v in asdict(self.cfg).items() if k in decoder_args},
        )  # fmt: skip
        if self.frozen_encoder:  # [A] decoder-only fine-tuning
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @property
    def frozen_encoder(self) -> bool:
        return self.cfg.finetune == "decoder"

    def train(self, mode: bool = True) -> FGMoE:
        """As ``nn.Module.train``, but a frozen encoder stays in eval mode (no dropout/drop-path)."""
        super().train(mode)
        if self.frozen_encoder:
            self.backbone.eval()
        return self

    def _check_size(self, size: tuple[int, int]) -> None:
        p = max(self.patch_size, self.backbone.reduction)
        if size[0] % p or size[1] % p:
            raise ConfigError(f"input size {size[0]}x{size[1]} is not divisible by the patch size {p}")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = image.shape[-2:]
        self._check_size((H, W))
        with torch.no_grad() if self.frozen_encoder else nullcontext():
            feats = self.backbone(image)  # L × (B, D, H/16, W/16)
        z = self.decoder(feats)  # (B, T, C, H/4, W/4)
        return {
            name: F.interpolate(head(z[:, t]), size=(H, W), mode="bilinear", align_corners=False)
            for t, (name, head) in enumerate(self.heads.items())
        }

    def named_blocks(self):
        """No re-parameterisable blocks (for ``complexity.flop_count``)."""
        return iter(())

    def routing_stats(self) -> dict[str, torch.Tensor]:
        """Per router, the mean routing weight of each expert over each image's pixels, detached: (B, T, N).

        Same form as :meth:`MLoRE.routing_stats` (rows are tasks in order; top-k zeros included), with the
        keys ``intra_task`` (N_r experts of each task's own pool) and ``global`` (N_g experts of all tasks).
        Routing is per pixel, so an entry is > 0 when *any* pixel of the image chose that expert.
        """
        return {k: g.mean(dim=(-2, -1)) for k, g in self.routing_maps().items()}  # (B, T, N)

    def routing_maps(self) -> dict[str, torch.Tensor]:
        """Per router, the per-pixel routing weights of the last forward, detached: (B, T, N, H/4, W/4)."""
        if self.decoder.grid is None:
            return {}
        B, H, W = self.decoder.grid
        out = {}
        for key, moe in self.decoder.routers().items():
            g = moe.last_gates.detach()  # (T, B*H*W, N)
            out[key] = g.view(g.shape[0], B, H, W, -1).permute(1, 0, 4, 2, 3)
        return out

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """λ·Σ balance loss of the last forward, weight included: one term for the T intra-task routers,
        one for the global router (balanced per task). Empty if λ = 0 or nothing is routed."""
        if self.cfg.load_balance_weight == 0:
            return {}
        return {
            f"load_balance_{key}": self.cfg.load_balance_weight
            * balance_terms(moe.last_gates, moe.last_probs, self.cfg.load_balance)
            for key, moe in self.decoder.routers().items()
            if moe.last_gates is not None
        }
