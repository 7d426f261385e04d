"""Strict weight loading whose mismatch is one line listing the keys (STYLE §1.4, §4.5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from densemoe.errors import ConfigError


def key_mismatch(expected: Iterable[str], given: Iterable[str], limit: int = 20) -> ConfigError | None:
    """The error for a state dict whose keys differ from the model's, or None when they agree."""
    own, got = set(expected), set(given)
    missing, unexpected = sorted(own - got), sorted(got - own)
    if not missing and not unexpected:
        return None

    def show(keys: list[str]) -> str:
        return f"{keys[:limit]}{' …' if len(keys) > limit else ''}"

    return ConfigError(
        f"checkpoint does not match the model: missing keys {show(missing)}, "
        f"unexpected keys {show(unexpected)}"
    )


class StrictLoading(nn.Module):
    """``load_state_dict`` is strict by default, and a key mismatch is a one-line :class:`ConfigError`."""

    def load_state_dict(self, state_dict: Mapping, strict: bool = True, assign: bool = False):
        if strict and (error := key_mismatch(self.state_dict(), state_dict)) is not None:
            raise error
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
