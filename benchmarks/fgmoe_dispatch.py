"""Speed of FGMoE's two exact expert dispatches on the CPU smoke configuration (or a GPU with --device cuda).

``dispatch="dense"``: every routed expert computed, gates zero outside the top-k (one matmul per layer);
``"sparse"``: (token, expert) pairs sorted by expert, padded to the largest load, one ``bmm`` over experts
(``fgmoe_moe.py``). Measured on the task MoEs + global MoE alone (fixed tokens) and on the whole model.

Usage: ``python benchmarks/fgmoe_dispatch.py [--preset fgmoe_tiny_synth] [--batch 8] [--device cpu]``.
Writes ``benchmarks/results/fgmoe_dispatch_<date>.md`` (``--out`` to change) and prints the same table.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlore_speed import timed

from densemoe.models import create_model


def moes_only(model, tokens: torch.Tensor, shared: torch.Tensor, train: bool):
    dec = model.decoder

    def run():
        with torch.set_grad_enabled(train):
            z = dec.task_moe(tokens) + dec.global_moe(shared)
            if train:
                z.square().mean().backward()

    return run


def whole(model, image: torch.Tensor, train: bool):
    def run():
        with torch.set_grad_enabled(train):
            out = model(image)
            if train:
                (sum(o.mean() for o in out.values()) + sum(model.aux_losses().values())).backward()

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="fgmoe_tiny_synth")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {d: create_model(args.preset, dispatch=d).to(args.device) for d in ("dense", "sparse")}
    models["sparse"].load_state_dict(models["dense"].state_dict())
    m = models["dense"]
    H, W = m.img_size
    image = torch.randn(args.batch, 3, H, W, device=args.device)
    C, T, M = m.cfg.channels, len(m.tasks), args.batch * (H // 4) * (W // 4)
    tokens = torch.randn(T, M, C, device=args.device)
    shared = torch.randn(1, M, C, device=args.device)
    rows = []
    for label, make, train in (
        ("train fwd+bwd, task + global MoEs", lambda mm: moes_only(mm, tokens, shared, True), True),
        ("inference, task + global MoEs", lambda mm: moes_only(mm, tokens, shared, False), False),
        ("train fwd+bwd, whole model", lambda mm: whole(mm, image, True), True),
        ("inference, whole model", lambda mm: whole(mm, image, False), False),
    ):
        ms = {}
        for d, mm in models.items():
            mm.train(train)
            ms[d] = 1000 * timed(make(mm), args.device, warmup=1, repeats=3)
        rows.append(
            f"| {label} | {ms['dense']:.1f} | {ms['sparse']:.1f} | {ms['dense'] / ms['sparse']:.2f}× |"
        )
    cfg = m.cfg
    device = (
        "CPU, 2 cores (dev machine, shared with other jobs)"
        if args.device == "cpu"
        else torch.cuda.get_device_name()
    )
    text = "\n".join(
        [
            f"# FGMoE expert dispatch — {args.preset}, batch {args.batch}, {H}×{W}",
            "",
            f"Date {datetime.date.today().isoformat()}; device: {device}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; median of 3 runs after 1 warm-up run; T = {T} tasks, "
            f"M = {M} tokens, C = {C}, N_r = {cfg.routed_experts} (k = {cfg.top_k}), "
            f"N_g = {cfg.global_experts} (k_g = {cfg.global_top_k}). "
            "Produced by `benchmarks/fgmoe_dispatch.py`.",
            "",
            "| measurement | dense ms | sparse ms | dense / sparse |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fgmoe_dispatch_{datetime.date.today().isoformat()}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
