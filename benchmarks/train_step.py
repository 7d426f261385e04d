"""Training-step time and peak memory of the trainer (``densemoe.train``), CPU smoke and GPU paper settings.

One step is :meth:`densemoe.train.Trainer.step` — forward (optionally under autocast), the official losses
plus load balancing, NaN guard, backward, clipping at 10, Adam and the poly schedule — on a random batch
of the sample contract (no data loading), so it measures the recipe's own cost.

- CPU (default): the smoke experiment ``mlore_tiny_synth_pascal`` (ViT-Tiny from scratch, 128×128) with
  its profile's batch, fp32 and bf16 autocast. Peak memory is the process's peak RSS (each setting runs
  in its own subprocess).
- GPU (``--gpu``): ``mlore_vitb16_pascal`` and ``mlore_vitl16_pascal`` at the paper's 512×512, batch 2 per
  GPU (the paper's per-GPU batch), fp32 / bf16 / fp16; step time, images/s, peak
  ``torch.cuda.max_memory_allocated``, and the decoder's share of the step (1 − backbone fwd+bwd / step).
  Random-init backbones (no download needed).

Usage: ``python benchmarks/train_step.py [--gpu] [--steps 5] [--threads 2] [--out FILE]``; writes
``benchmarks/results/train_step_<date>.md`` (CPU) or ``train_step_gpu_<date>.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from densemoe.config import load_params
from densemoe.train import Trainer, resolve_experiment

ROOT = Path(__file__).resolve().parents[1]
CPU_DEVICE = "CPU, 2 cores (dev machine, shared with other jobs)"


def fake_batch(exp, batch: int) -> dict:
    """A random batch of the sample contract (DESIGN §4) at the experiment's crop size."""
    H, W = exp.crop
    g = torch.Generator().manual_seed(0)
    out = {"image": torch.randn(batch, 3, H, W, generator=g)}
    for name, spec in exp.tasks.items():
        if name in ("semseg", "human_parts"):
            out[name] = torch.randint(0, spec.channels, (batch, H, W), generator=g)
        elif name in ("sal", "edge"):
            out[name] = torch.randint(0, 2, (batch, H, W), generator=g).float()
        elif name == "normals":
            out[name] = torch.nn.functional.normalize(torch.randn(batch, 3, H, W, generator=g), dim=1)
        elif name == "depth":
            out[name] = torch.rand(batch, 1, H, W, generator=g) * 10
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(experiment: str, device: str, amp: str, batch: int | None, steps: int,
            pretrained: bool = False) -> dict:
    """Median step seconds and peak memory of one setting."""
    params = load_params(ROOT / "params.yaml")
    exp = resolve_experiment(params, experiment, runs="/tmp/densemoe_bench_runs")
    exp.model_args["pretrained"] = pretrained
    exp.train = replace(exp.train, device=device, amp=amp, batch_size=batch or exp.train.batch_size)
    trainer = Trainer(exp, progress=False)
    dev = trainer.info.device
    data = fake_batch(exp, exp.train.batch_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):  # one warm-up step
        sync(dev)
        t = time.perf_counter()
        trainer.step(data)
        sync(dev)
        if i:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    out = {"experiment": experiment, "model": exp.preset, "amp": amp, "batch": exp.train.batch_size,
           "crop": f"{exp.crop[0]}x{exp.crop[1]}", "step_s": step, "img_per_s": exp.train.batch_size / step}
    if dev.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        model = trainer.model
        image = data["image"].to(dev)
        bb = []
        for i in range(steps + 1):
            model.zero_grad(set_to_none=True)
            sync(dev)
            t = time.perf_counter()
            from densemoe.train.evaluation import autocast

            with autocast(dev, amp):
                feats = model.backbone(image)
            sum(f.float().mean() for f in feats).backward()
            sync(dev)
            if i:
                bb.append(time.perf_counter() - t)
        out["decoder_share"] = 1 - statistics.median(bb) / step
    else:
        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def table(rows: list[dict], gpu: bool) -> str:
    head = "| experiment | amp | batch | crop | step (ms) | images/s | peak memory (MiB) |"
    sep = "|---|---|---|---|---|---|---|"
    if gpu:
        head, sep = head + " decoder share |", sep + "---|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['experiment']} | {r['amp']} | {r['batch']} | {r['crop']} | {1000 * r['step_s']:.1f} | "
                f"{r['img_per_s']:.2f} | {r['peak_mib']:.0f} |")
        if gpu:
            line += f" {100 * r['decoder_share']:.0f}% |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the paper settings on cuda")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # json settings, in a subprocess
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    if args.gpu:
        settings = [dict(experiment=e, device="cuda", amp=a, batch=2, steps=args.steps)
                    for e in ("mlore_vitb16_pascal", "mlore_vitl16_pascal") for a in ("none", "bf16", "fp16")]
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (none visible)"
    else:
        settings = [dict(experiment="mlore_tiny_synth_pascal", device="cpu", amp=a, batch=None,
                         steps=args.steps) for a in ("none", "bf16")]
        device = CPU_DEVICE
    rows = []
    for s in settings:  # one subprocess each: independent peak memory
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--one", json.dumps(s)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    text = (f"# Trainer step — {'paper settings (GPU)' if args.gpu else 'smoke setting (CPU)'}\n\n"
            f"Date {date}; device: {device}; torch {torch.__version__}, {args.threads} threads; median of "
            f"{args.steps} steps after 1 warm-up step. One step = `Trainer.step` (forward, official losses + "
            f"load balancing, NaN guard, backward, clip 10, Adam, poly lr) on a random batch (no data "
            f"loading). Produced by `benchmarks/train_step.py{' --gpu' if args.gpu else ''}`.\n\n"
            f"{table(rows, args.gpu)}\n")
    name = f"train_step_{'gpu_' if args.gpu else ''}{date}.md"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
