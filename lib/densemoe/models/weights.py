"""Pretrained backbone weights on nodes without internet: check them before timm, fetch them in advance.

timm loads ``pretrained=True`` weights through huggingface_hub. On a compute node without internet the hub
retries for about 50 s and then ends in a ``LocalEntryNotFoundError`` traceback. Two routes work offline,
and every error here names them in one line:

- a local weights file, ``model_args: {pretrained: /path/to/weights.safetensors}`` (``backbone.py`` hands
  it to timm through ``pretrained_cfg_overlay=dict(file=...)``);
- a pre-filled Hugging Face cache with ``HF_HUB_OFFLINE=1``: ``densemoe weights fetch PRESET`` (or a timm
  backbone name) on a login node with internet downloads into ``HF_HOME``, shared with the compute nodes.

:func:`ensure_pretrained_available` runs right before ``timm.create_model``: weights already in the cache
go on (huggingface_hub falls back to the cache at once when its first request fails); otherwise offline mode
is an error, and so is a hub that does not answer one short probe (:data:`PROBE_TIMEOUT_S`), instead of the
long retries. :func:`pretrained_errors` turns what still escapes from the hub or from a weights file
into the same one-line :class:`~densemoe.errors.ConfigError`.

The files looked for are the ones timm's ``load_state_dict_from_hf`` asks the hub for, in its order: the
pretrained config's ``hf_hub_filename`` (default ``pytorch_model.bin``), preceded by its safetensors
alternative (``model.safetensors``) unless it is one already.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import timm
from huggingface_hub import constants, get_session, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from densemoe.errors import ConfigError, DensemoeError, unknown

#: Seconds the hub probe waits for an answer (huggingface_hub's own retries take about 50 s).
PROBE_TIMEOUT_S = 5.0

#: The weights file timm asks the hub for when a pretrained config names none (``timm.models._hub``).
TIMM_DEFAULT_FILENAME = "pytorch_model.bin"

LOCAL_FILE_ROUTE = "model_args: {pretrained: /path/to/weights.safetensors}"


@dataclass(frozen=True)
class HubWeights:
    """Where timm finds a backbone's pretrained weights on the Hugging Face hub."""

    backbone: str
    repo_id: str
    revision: str | None
    filenames: tuple[str, ...]  # timm's order of preference

    @property
    def where(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def cached(self, cache_dir: str | os.PathLike | None = None) -> str | None:
        """The cached file timm would load, or None; looks at the disk only."""
        for filename in self.filenames:
            path = try_to_load_from_cache(self.repo_id, filename, cache_dir=cache_dir, revision=self.revision)
            if isinstance(path, str):
                return path
        return None


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    text = text[:limit] + ("…" if len(text) > limit else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def cache_dir_of(cache_dir: str | os.PathLike | None = None) -> str:
    """The hub cache folder in use (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``)."""
    return os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def offline_mode() -> bool:
    """huggingface_hub's offline switch (``HF_HUB_OFFLINE=1``, read when huggingface_hub is imported)."""
    return constants.is_offline_mode()


#: timm's safetensors alternative of a ``.bin`` name (else ``<stem>.safetensors``), tried first.
_SAFE_ALTERNATIVE = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}


def _candidates(cfg: Mapping) -> tuple[str, ...]:
    filename = cfg.get("hf_hub_filename") or TIMM_DEFAULT_FILENAME
    if filename.endswith(".safetensors") or (cfg.get("hf_hub_filename") and cfg.get("custom_load") == "hf"):
        return (filename,)  # loaded straight away
    if filename.endswith(".bin"):
        return (_SAFE_ALTERNATIVE.get(filename, filename[: -len(".bin")] + ".safetensors"), filename)
    return (filename,)


def pretrained_cfg(backbone: str, overlay: Mapping | None = None) -> dict:
    """timm's pretrained config for ``backbone`` (``arch`` or ``arch.tag``) with ``overlay`` applied."""
    arch, _, tag = backbone.partition(".")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
        raise unknown("pretrained tag", tag, tags, where=f" of timm backbone '{arch}'")
    cfg = timm.models.get_pretrained_cfg(backbone)
    out = cfg.to_dict() if cfg is not None else {}
    return {**out, **dict(overlay or {})}


def no_weights_error(backbone: str) -> ConfigError:
    return ConfigError(
        f"timm has no pretrained weights for backbone '{backbone}'; use pretrained: false (random init), a "
        f"tagged name with weights (timm.list_pretrained('{backbone.partition('.')[0]}*')), or a local file, "
        f"{LOCAL_FILE_ROUTE}"
    )


def hub_weights(backbone: str, overlay: Mapping | None = None) -> HubWeights | None:
    """The hub location of ``backbone``'s weights; None when timm loads them from elsewhere (a local file,
    a state dict, a plain URL); :func:`no_weights_error` when there are none."""
    cfg = pretrained_cfg(backbone, overlay)
    if cfg.get("file") or cfg.get("state_dict") is not None or cfg.get("source") == "local-dir":
        return None
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        if cfg.get("url"):
            return None
        raise no_weights_error(backbone)
    repo_id, _, revision = hub_id.partition("@")
    return HubWeights(backbone, repo_id, revision or None, _candidates(cfg))


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the hub endpoint (``HF_ENDPOINT``) answers within ``timeout`` s, else why not (one line)."""
    try:
        response = get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as exc:  # any failure to get an answer (DNS, refused, proxy, TLS, timeout) is the answer
        return _first_line(exc)
    if response.status_code >= 500:
        return f"it answers HTTP {response.status_code}"
    return None


def unreachable_error(backbone: str, reason: str, cache_dir: str | os.PathLike | None = None) -> ConfigError:
    return ConfigError(
        f"pretrained weights of '{backbone}' are not in the Hugging Face cache {cache_dir_of(cache_dir)} and "
        f"the hub {constants.ENDPOINT} is unreachable ({reason}); without internet either set "
        f"{LOCAL_FILE_ROUTE}, or run `densemoe weights fetch {backbone}` on a node with internet into an "
        "HF_HOME shared with this node and set HF_HUB_OFFLINE=1 here"
    )


def not_cached_error(backbone: str, cache_dir: str | os.PathLike | None = None) -> ConfigError:
    return ConfigError(
        f"HF_HUB_OFFLINE=1 but the pretrained weights of '{backbone}' are not in the Hugging Face cache "
        f"{cache_dir_of(cache_dir)}; run `densemoe weights fetch {backbone}` (or the preset's name) on a "
        f"node with internet into the same HF_HOME, or set {LOCAL_FILE_ROUTE}"
    )


def ensure_pretrained_available(
    backbone: str, cache_dir: str | os.PathLike | None = None, overlay: Mapping | None = None
) -> str | None:
    """Check that timm can get ``backbone``'s pretrained weights; one-line ConfigError at once if not.

    Returns the cached file when there is one. Without it: offline mode is an error, and so is a hub that
    does not answer :func:`probe_hub`; a reachable hub is left to timm to download from.
    """
    weights = hub_weights(backbone, overlay)
    if weights is None:
        return None
    if (path := weights.cached(cache_dir)) is not None:
        return path
    if offline_mode():
        raise not_cached_error(backbone, cache_dir)
    if (reason := probe_hub()) is not None:
        raise unreachable_error(backbone, reason, cache_dir)
    return None


@contextlib.contextmanager
def pretrained_errors(
    backbone: str, pretrained: bool | str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Iterator[None]:
    """Turn the hub's and the weights file's failures inside ``timm.create_model`` into one-line errors."""
    try:
        yield
    except DensemoeError:
        raise
    except LocalEntryNotFoundError as exc:  # not cached and (offline, or the hub unreachable after retries)
        if offline_mode():
            raise not_cached_error(backbone, cache_dir) from exc
        raise unreachable_error(backbone, _first_line(exc), cache_dir) from exc
    except HfHubHTTPError as exc:  # gated or missing repository, hub down
        raise ConfigError(
            f"cannot download the pretrained weights of '{backbone}' from {constants.ENDPOINT}: "
            f"{_first_line(exc)}; fix access (HF_TOKEN) or set {LOCAL_FILE_ROUTE}"
        ) from exc
    except ConnectionError as exc:  # OfflineModeIsEnabled and other refused connections
        if offline_mode():
            raise not_cached_error(backbone, cache_dir) from exc
        raise unreachable_error(backbone, _first_line(exc), cache_dir) from exc
    except TypeError:  # a bad keyword argument, not the weights
        raise
    except Exception as exc:  # a broken or foreign file fails anywhere in torch/safetensors/pickle/timm
        if "No pretrained weights exist" in str(exc):  # timm's RuntimeError for a backbone without weights
            raise no_weights_error(backbone) from exc
        if isinstance(pretrained, bool):
            raise
        raise ConfigError(
            f"cannot load backbone weights file {os.fspath(pretrained)} into '{backbone}' "
            f"({_first_line(exc)}); it must be a readable timm state dict (.safetensors or .pth) of this "
            "backbone"
        ) from exc


# ----------------------------------------------------------------------------------------------------------
# densemoe weights fetch


def backbone_of(name: str) -> str:
    """The timm backbone of a densemoe preset, or ``name`` itself if it is a timm model name."""
    import torch

    from densemoe.models.registry import create_model, is_model, list_models

    if is_model(name):
        with torch.device("meta"):  # no memory, no weights: only the preset's arguments are wanted
            model = create_model(name, pretrained=False)
        return model.model_args["backbone"]
    if timm.is_model(name):
        return name
    raise unknown("model preset", name, list_models(), where=" (a densemoe preset or a timm backbone name)")


def fetchable(backbone: str) -> HubWeights:
    """``backbone``'s hub weights, or a one-line error if ``densemoe weights fetch`` cannot get them."""
    weights = hub_weights(backbone)
    if weights is None:
        raise ConfigError(
            f"the weights of '{backbone}' are not on the Hugging Face hub (timm downloads them from "
            f"{pretrained_cfg(backbone).get('url')} into TORCH_HOME); copy that file and set "
            f"{LOCAL_FILE_ROUTE}"
        )
    return weights


def fetch_weights(backbone: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> str:
    """Download ``backbone``'s pretrained weights into the hub cache, as timm will look for them; the path."""
    weights = fetchable(backbone)
    if offline_mode():
        if (path := weights.cached(cache_dir)) is not None and not force:
            return path
        raise ConfigError(
            f"HF_HUB_OFFLINE=1 is set, so the weights of '{backbone}' cannot be fetched; unset it (on a node "
            "with internet) and re-run `densemoe weights fetch`"
        )
    if (reason := probe_hub()) is not None:
        raise ConfigError(
            f"cannot fetch the weights of '{backbone}': the hub {constants.ENDPOINT} is unreachable "
            f"({reason}); run `densemoe weights fetch` on a node with internet (HF_ENDPOINT for a mirror, "
            f"HTTPS_PROXY for a proxy), or copy the weights file and set {LOCAL_FILE_ROUTE}"
        )
    with pretrained_errors(backbone, True, cache_dir):
        for filename in weights.filenames:
            try:
                return hf_hub_download(
                    weights.repo_id, filename, revision=weights.revision, cache_dir=cache_dir,
                    force_download=force, library_name="timm", library_version=timm.__version__,
                )
            except LocalEntryNotFoundError:  # the hub went away: not a missing file
                raise
            except EntryNotFoundError:  # the hub has no such file: timm's next choice
                continue
    raise ConfigError(
        f"{weights.where} on {constants.ENDPOINT} has none of {', '.join(weights.filenames)}, the files timm "
        f"loads for '{backbone}'; set {LOCAL_FILE_ROUTE}"
    )


def cmd_weights_fetch(args: argparse.Namespace) -> None:
    """Fill the Hugging Face cache with the backbone weights of presets, for nodes without internet."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    backbones: dict[str, list[str]] = {}
    for name in args.names:  # every name checked before the first download
        backbones.setdefault(backbone_of(name), []).append(name)
    for backbone in backbones:
        fetchable(backbone)  # no weights on the hub: an error before any download
    quiet = args.quiet or bool(os.environ.get("CI"))
    were_disabled = are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        for backbone, names in backbones.items():
            path = fetch_weights(backbone, args.cache_dir, args.force)
            label = ", ".join(n for n in names if n != backbone)
            print(f"{backbone}{f' ({label})' if label else ''}: {path}")
    finally:
        if quiet and not were_disabled:
            enable_progress_bars()
    cache = os.path.abspath(cache_dir_of(args.cache_dir))
    print(f"cache {cache}; on nodes without internet: HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1 densemoe train")


def add_weights_parser(
    subparsers, parents: Iterable[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Register ``densemoe weights fetch PRESET [PRESET ...]``."""
    weights = subparsers.add_parser("weights", help="pretrained backbone weights for nodes without internet")
    sub = weights.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    parser = sub.add_parser(
        "fetch", parents=list(parents),
        help="download the backbone weights of presets into the Hugging Face cache",
        description="Download the pretrained backbone weights of each preset (or timm backbone name) into "
                    "the Hugging Face cache, the files timm loads for `pretrained: true`. Run it on a node "
                    "with internet, into an HF_HOME shared with the compute nodes; there, set "
                    "HF_HUB_OFFLINE=1.",
    )
    parser.add_argument("names", nargs="+", metavar="PRESET",
                        help="a densemoe preset (e.g. mlore_vitl16_pascal) or a timm backbone name")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="hub cache folder (default: HF_HUB_CACHE, i.e. $HF_HOME/hub)")
    parser.add_argument("--force", action="store_true", help="download again even if cached")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_weights_fetch)
    return parser
