"""densemoe: multi-task dense prediction with mixture-of-experts decoders (MLoRE, FGMoE)."""

from densemoe.errors import ConfigError, DataError, DensemoeError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DensemoeError", "__version__"]
