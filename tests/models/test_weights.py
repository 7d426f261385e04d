"""Pretrained weights without internet: one line at once, the local-file route, `densemoe weights fetch`.

Nothing here touches the real hub. huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` when it is imported, so the tests set the module constants it reads at call time: the
endpoint is a closed port on 127.0.0.1 (no hub) or a small fake hub served from a thread, answering HEAD
and GET on ``/<repo>/resolve/<rev>/<file>`` with the headers huggingface_hub needs; the cache is tmp_path.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time

import pytest
import timm
import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors.torch import save, save_file

from densemoe import cli
from densemoe.errors import ConfigError
from densemoe.models import backbone as backbone_module
from densemoe.models import create_model
from densemoe.models.backbone import create_backbone
from densemoe.models.weights import PROBE_TIMEOUT_S, hub_weights, pretrained_errors

SMALL = dict(depth=4, embed_dim=32, num_heads=2)
NAME = "vit_tiny_patch16_384"  # the tiny presets' backbone
REPO = "timm/vit_tiny_patch16_384.augreg_in21k_ft_in1k"  # where timm looks for its default weights
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST_S = 10.0  # huggingface_hub's retries against an unreachable hub took ~50 s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_hub_at(monkeypatch, url: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def _offline(monkeypatch, on: bool = True) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if on else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """An empty hub cache, online mode, and no hub (a closed port)."""
    path = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(path.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    _offline(monkeypatch, False)
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    return path


def _state_dict() -> dict[str, torch.Tensor]:
    """ImageNet-layout weights (class token, 24×24 grid, 1000-class head) of a tiny ViT, as on the hub."""
    vit = timm.create_model(NAME, **SMALL)
    return {k: v.contiguous() for k, v in vit.state_dict().items()}


def _assert_loaded(bb, sd) -> None:
    torch.testing.assert_close(bb.vit.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(bb.vit.patch_embed.proj.weight, sd["patch_embed.proj.weight"])


class _FakeHub(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _FakeHub

    def _answer(self, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        if self.path == "/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub(cache, monkeypatch):
    """A hub on 127.0.0.1 serving ``files`` (URL path -> bytes); the endpoint points at it."""
    server = _FakeHub(("127.0.0.1", 0), _Handler)
    server.files, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_unreachable_hub_is_one_line_at_once_naming_both_routes(cache):
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        create_model("mlore_tiny_synth", pretrained=True)
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"took {elapsed:.1f} s"
    line = _one_line(str(info.value))
    assert "unreachable" in line and constants.ENDPOINT in line and str(cache) in line
    assert "pretrained: /path/to/weights.safetensors" in line  # route (a): a local file
    assert f"densemoe weights fetch {NAME}" in line and "HF_HUB_OFFLINE=1" in line  # route (b)
    assert not any(cache.glob("**/*.safetensors"))


def test_offline_without_the_weights_names_the_fetch_command(cache, monkeypatch):
    _offline(monkeypatch)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        create_backbone(NAME, (32, 32), pretrained=True, **SMALL)
    assert time.monotonic() - start < FAST_S
    line = _one_line(str(info.value))
    assert line.startswith("HF_HUB_OFFLINE=1 but the pretrained weights of 'vit_tiny_patch16_384'")
    assert f"`densemoe weights fetch {NAME}`" in line and str(cache) in line
    assert "pretrained: /path/to/weights.safetensors" in line


def test_hub_failures_inside_timm_become_the_same_line(cache, monkeypatch):
    """The second line of defence: what still escapes from huggingface_hub during timm.create_model."""
    monkeypatch.setattr(backbone_module, "ensure_pretrained_available", lambda *a, **k: None)
    _offline(monkeypatch)
    with pytest.raises(ConfigError, match=r"^HF_HUB_OFFLINE=1 but .*densemoe weights fetch") as info:
        create_backbone(NAME, (32, 32), pretrained=True, **SMALL)  # timm's LocalEntryNotFoundError
    _one_line(str(info.value))
    _offline(monkeypatch, False)
    for exc in (LocalEntryNotFoundError("no\nconnection"), OfflineModeIsEnabled("off"), ConnectionError("x")):
        with pytest.raises(ConfigError, match="unreachable.*densemoe weights fetch") as info:
            with pretrained_errors(NAME, True):
                raise exc
        _one_line(str(info.value))


def test_local_weights_file_works_offline(cache, monkeypatch, tmp_path):
    _offline(monkeypatch)
    sd = _state_dict()
    path = tmp_path / "vit_tiny.safetensors"
    save_file(sd, path)
    _assert_loaded(create_backbone(NAME, (32, 32), pretrained=str(path), **SMALL), sd)
    assert not any(cache.glob("**/*"))  # nothing looked up in, or written to, the hub cache


def test_missing_or_unreadable_local_file_is_one_line(cache, tmp_path):
    missing = tmp_path / "nope" / "weights.safetensors"
    with pytest.raises(ConfigError, match="backbone weights file not found") as info:
        create_backbone(NAME, (32, 32), pretrained=str(missing), **SMALL)
    assert str(missing) in _one_line(str(info.value))
    garbage = {"garbage.safetensors": b"not a checkpoint", "garbage.pth": b"PK\x03\x04 truncated zip"}
    for name, data in garbage.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(ConfigError, match="cannot load backbone weights file") as info:
            create_backbone(NAME, (32, 32), pretrained=str(bad), **SMALL)
        assert str(bad) in _one_line(str(info.value))
    with pytest.raises(ConfigError, match="is not a file") as info:
        create_backbone(NAME, (32, 32), pretrained=str(tmp_path), **SMALL)
    _one_line(str(info.value))


def test_a_backbone_without_pretrained_weights_is_one_line(cache):
    with pytest.raises(ConfigError, match="no pretrained weights for backbone 'vit_base_patch16_gap_224'"):
        create_backbone("vit_base_patch16_gap_224", (32, 32), pretrained=True, depth=1)
    with pytest.raises(ConfigError, match="unknown pretrained tag 'augreg_in21k_ft_in1q'.*did you mean"):
        hub_weights("vit_tiny_patch16_384.augreg_in21k_ft_in1q")


def test_weights_fetch_fills_the_cache_for_offline_nodes(fake_hub, cache, monkeypatch, capsys):
    sd = _state_dict()
    fake_hub.files[f"/{REPO}/resolve/main/model.safetensors"] = save(sd)
    assert cli.main(["weights", "fetch", "-q", "mlore_tiny_synth", "fgmoe_tiny_synth"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{NAME} (mlore_tiny_synth, fgmoe_tiny_synth): {cache}")  # one backbone, once
    assert out[0].endswith("model.safetensors") and f"HF_HUB_CACHE={cache} HF_HUB_OFFLINE=1" in out[1]
    fetched = len(fake_hub.requests)

    _offline(monkeypatch)  # the compute node: offline, sharing the cache
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    _assert_loaded(create_backbone(NAME, (32, 32), pretrained=True, **SMALL), sd)
    _offline(monkeypatch, False)  # and without HF_HUB_OFFLINE: huggingface_hub falls back to the cache
    start = time.monotonic()
    _assert_loaded(create_backbone(NAME, (32, 32), pretrained=True, **SMALL), sd)
    assert time.monotonic() - start < FAST_S
    assert len(fake_hub.requests) == fetched


def test_weights_fetch_takes_the_file_timm_falls_back_to(fake_hub, cache, monkeypatch, capsys):
    """A repository with only pytorch_model.bin: fetched, and found offline after timm's model.safetensors."""
    sd = _state_dict()
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    fake_hub.files[f"/{REPO}/resolve/main/pytorch_model.bin"] = buffer.getvalue()
    assert cli.main(["weights", "fetch", "-q", NAME]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("pytorch_model.bin")
    _offline(monkeypatch)
    _assert_loaded(create_backbone(NAME, (32, 32), pretrained=True, **SMALL), sd)


def test_weights_fetch_user_errors_are_one_line(cache, monkeypatch, capsys):
    assert cli.main(["weights", "fetch", "mlore_tiny_synht"]) == 2
    assert "unknown model preset 'mlore_tiny_synht'; did you mean 'mlore_tiny_synth'?" in (
        _one_line(capsys.readouterr().err).replace(" (a densemoe preset or a timm backbone name)", "")
    )
    assert cli.main(["weights", "fetch", "vit_base_patch16_gap_224"]) == 2
    assert "no pretrained weights" in _one_line(capsys.readouterr().err)

    start = time.monotonic()
    assert cli.main(["weights", "fetch", "mlore_tiny_synth"]) == 2  # the closed port
    assert time.monotonic() - start < PROBE_TIMEOUT_S + FAST_S
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"densemoe: error: cannot fetch the weights of '{NAME}': the hub ")
    assert "unreachable" in line and "node with internet" in line

    _offline(monkeypatch)
    assert cli.main(["weights", "fetch", "mlore_tiny_synth"]) == 2
    assert "HF_HUB_OFFLINE=1 is set" in _one_line(capsys.readouterr().err)
