"""The standard-MoE decoder MLoRE is measured against (Tables 1, 2 "+MoE", 12 "MoE").

Paper: Yang et al., CVPR 2024, arXiv:2403.17749, §4.2: "The expert networks in the standard MoE
(15 experts) are similar to ours, each of which consists of a 3×3 convolution and a 1×1 convolution with
ReLU among them." No code was released for it.

It is MLoRE's module with full-width experts (hidden width C, i.e. rank C) and a ReLU between the two
convs, routed by the same task routers and noisy top-k, with no generic path and no task-specific path
(Table 2 adds those only to LoRE). inferred: like MLoRE's experts, their sum is batch-normalised per task
and the module ends with the same BN→GELU→Linear tail. With the ReLU the experts cannot be merged, so
this decoder has no re-parameterised form; the paper's FLOPs for it (1834 G) count only the k = 9
active experts (see ``complexity.py``). Its parameters are 649.5 M with ViT-B on PASCAL; the paper's 676 M
is that plus 26.66 M, exactly the never-run modules of the official ViT-B file (``specs/mlore.md`` §1.15),
so the paper seems to have counted the MoE model with them.
"""

from __future__ import annotations


def standard_moe_args(channels: int, experts: int = 15, hidden: int | None = None) -> dict:
    """The ``MLoReConfig`` fields that turn an MLoRE module into a standard MoE."""
    return dict(
        ranks=(hidden or channels,) * experts,  # hidden width of each expert (3×3 C→H, ReLU, 1×1 H→C)
        expert_activation="relu",
        generic=None,
        task_rank=0,
    )
