"""Models: MLoRE, its ablation family and baselines, built by name (``create_model``), timm-style.

>>> from densemoe.models import create_model
>>> model = create_model("mlore_tiny_synth")          # doctest: +SKIP
>>> preds = model(images)  # {task: (B, K_t, H, W)}   # doctest: +SKIP
"""

from densemoe.models import fgmoe_presets  # noqa: F401  (registers the FGMoE presets)
from densemoe.models.mlore import MLoRE
from densemoe.models.mlore_block import MLoReConfig
from densemoe.models.registry import create_model, is_model, list_models, register_model

__all__ = ["MLoRE", "MLoReConfig", "create_model", "is_model", "list_models", "register_model"]
