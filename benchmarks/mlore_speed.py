"""Speed of MLoRE's three execution paths on the CPU smoke configuration (or a GPU with --device cuda).

1. Training step (forward + backward, train mode): the fast path (``mlore_block.py``: one expert conv pair
   per module, tasks stacked into the batch) against the per-expert-loop reference (``mlore_reference.py``,
   the shape of the official code); whole model and the 8 MLoRE modules alone.
2. Inference (eval, no grad): the plain modules against the re-parameterised ones (Eq. 3–7).

The timing helpers (``timed``, ``blocks_only``, ``fused_features``) are ``densemoe.analysis.efficiency``'s,
which notebook 06 uses for its inference rows.

Usage: ``python benchmarks/mlore_speed.py [--preset mlore_tiny_synth] [--batch 8] [--device cpu]``.
Writes ``benchmarks/results/mlore_speed_<date>.md`` (``--out`` to change) and prints the same table.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlore_reference import reference_blocks

from densemoe.analysis.efficiency import blocks_only, fused_features, timed
from densemoe.models import create_model


def train_step(model, image):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(image)
        (sum(o.float().mean() for o in out.values()) + sum(model.aux_losses().values())).backward()

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mlore_tiny_synth")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)  # 2 threads on 2 shared cores spin-wait badly
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.preset).to(args.device)
    H, W = model.img_size
    image = torch.randn(args.batch, 3, H, W, device=args.device)
    feats = fused_features(model, image)
    reference = copy.deepcopy(model)
    rows = []

    model.train(), reference.train()
    fast_step, fast_blocks = (
        timed(train_step(model, image), args.device),
        timed(blocks_only(model, feats, True), args.device),
    )
    with reference_blocks(reference):
        ref_step = timed(train_step(reference, image), args.device)
        ref_blocks = timed(blocks_only(reference, feats, True), args.device)
    rows += [
        ("train fwd+bwd, whole model", "reference loops", ref_step, "fast path", fast_step),
        ("train fwd+bwd, 8 MLoRE modules", "reference loops", ref_blocks, "fast path", fast_blocks),
    ]

    model.eval()
    merged = model.reparameterize()
    with torch.no_grad():
        plain_inf, rep_inf = (
            timed(lambda: model(image), args.device),
            timed(lambda: merged(image), args.device),
        )
        plain_blk = timed(blocks_only(model, feats, False), args.device)
        rep_blk = timed(blocks_only(merged, feats, False), args.device)
    rows += [
        ("inference, whole model", "plain", plain_inf, "re-parameterised", rep_inf),
        ("inference, 8 MLoRE modules", "plain", plain_blk, "re-parameterised", rep_blk),
    ]

    device = (
        "CPU, 2 cores (dev machine, shared with other jobs)"
        if args.device == "cpu"
        else torch.cuda.get_device_name()
    )
    lines = [
        f"# MLoRE speed — {args.preset}, batch {args.batch}, {H}×{W}",
        "",
        f"Date {datetime.date.today().isoformat()}; device: {device}; torch {torch.__version__}, "
        f"{args.threads} threads; median of 5 runs after 1 warm-up run. "
        "Produced by `benchmarks/mlore_speed.py`.",
        "",
        "| measurement | baseline | ms | ours | ms | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for what, a, ta, b, tb in rows:
        lines.append(f"| {what} | {a} | {ta * 1e3:.1f} | {b} | {tb * 1e3:.1f} | {ta / tb:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(
        args.out or Path(__file__).parent / "results" / f"mlore_speed_{datetime.date.today().isoformat()}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
