"""SynthScenes throughput: images/s of ``render_scene`` and of ``write_synth_dataset`` (PNG/npy included).

Usage: ``python benchmarks/synth_throughput.py [--images 300] [--repeats 3] [--size 128] [--workers 1 2]
[--dir /dev/shm]``.
Each row is measured ``--repeats`` times; the best and the median are shown, since a shared machine
makes single runs noisy. Record dated results in ``benchmarks/results/synth_throughput.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from functools import partial

import numpy as np

from densemoe.data.synthetic import SYNTH_PRESETS, render_scene, write_synth_dataset


def _cpu() -> float:
    """CPU seconds used by this process and its finished children (pool workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def time_render(cfg, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds to render ``n`` scenes in this process (all targets, no I/O)."""
    render_scene(10_000, cfg)  # warm-up
    wall, cpu = time.perf_counter(), _cpu()
    for i in range(n):
        render_scene(np.random.SeedSequence([0, 0, i]), cfg)
    return time.perf_counter() - wall, _cpu() - cpu


def time_write(cfg, n: int, workers: int, parent: str | None) -> tuple[float, float]:
    """(wall, CPU) seconds for ``write_synth_dataset`` to write ``n`` images with ``workers`` processes
    into a fresh temporary folder under ``parent`` (the system default if None)."""
    with tempfile.TemporaryDirectory(dir=parent) as root:
        wall, cpu = time.perf_counter(), _cpu()
        write_synth_dataset(root, "bench", cfg, {"train": n}, progress=False, workers=workers)
        return time.perf_counter() - wall, _cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row (best and median shown)")
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="write_synth_dataset workers")
    parser.add_argument("--dir", default=None, help="where to write (default: the system temp folder)")
    args = parser.parse_args()
    print(f"# SynthScenes throughput, {args.size}x{args.size}, {args.images} images x {args.repeats} repeats")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, writing under "
          f"{args.dir or tempfile.gettempdir()}, load average before: {os.getloadavg()[0]:.2f}\n")
    print("| preset | mode | workers | images/s best (median) | CPU ms/image best (median) |")
    print("|---|---|---|---|---|")
    for name, preset in SYNTH_PRESETS.items():
        cfg = replace(preset, height=args.size, width=args.size)
        modes = [("render_scene (arrays only)", 1, partial(time_render, cfg, args.images))]
        modes += [("write_synth_dataset (+ PNG/npy)", w, partial(time_write, cfg, args.images, w, args.dir))
                  for w in args.workers]
        for mode, workers, measure in modes:
            wall, cpu = np.array([measure() for _ in range(args.repeats)]).T
            rate = args.images / wall
            print(f"| {name} | {mode} | {workers} | {rate.max():.0f} ({np.median(rate):.0f}) | "
                  f"{1e3 * cpu.min() / args.images:.1f} ({1e3 * np.median(cpu) / args.images:.1f}) |")

if __name__ == "__main__":
    main()
