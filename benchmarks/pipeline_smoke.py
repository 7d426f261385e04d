"""Time `dvc repro` end to end and per stage; write benchmarks/results/pipeline_<profile>_<date>_<time>.md.

    python benchmarks/pipeline_smoke.py            # dvc repro (only what changed)
    python benchmarks/pipeline_smoke.py --force    # dvc repro --force: every stage, the number to report

Each line of dvc's output is time-stamped as it arrives; a stage lasts from its "Running stage" line to the
next one (the last to the end). The machine's load average at the start and the end is recorded: other
jobs on the machine lengthen the stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(force: bool) -> tuple[list[tuple[str, float]], float, int, list[str]]:
    cmd = ["dvc", "repro", *(["--force"] if force else [])]
    env = {**os.environ, "CI": "1", "DVC_NO_ANALYTICS": "1"}
    start = time.perf_counter()
    stages: list[tuple[str, float]] = []
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        for line in proc.stdout:
            now = time.perf_counter() - start
            m = re.match(r"Running stage '([^']+)'", line)
            if m:
                stages.append((m.group(1), now))
                print(f"[{now:7.1f} s] {m.group(1)}", flush=True)
            tail = [*tail[-20:], line.rstrip()]
    total = time.perf_counter() - start
    return stages, total, proc.returncode, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-run every stage")
    args = parser.parse_args()
    load0 = os.getloadavg()
    stages, total, code, tail = run(args.force)
    load1 = os.getloadavg()
    import yaml

    from densemoe.analysis.efficiency import machine_info

    profile = yaml.safe_load((ROOT / "params.yaml").read_text())["profile"]
    durations = [(name, (stages[i + 1][1] if i + 1 < len(stages) else total) - t)
                 for i, (name, t) in enumerate(stages)]
    groups: dict[str, list[float]] = {}
    for name, d in durations:
        groups.setdefault(name.split("@")[0], []).append(d)
    today = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# `dvc repro{' --force' if args.force else ''}`, profile `{profile}`, {today}",
        "",
        f"Machine: {machine_info()['cpu']}, {os.cpu_count()} logical cores, "
        f"Python {platform.python_version()}; load average {load0[0]:.2f} at the start, {load1[0]:.2f} at "
        f"the end. Exit code {code}. Measured by `benchmarks/pipeline_smoke.py`.",
        "",
        f"**Total: {total / 60:.1f} min ({total:.0f} s), {len(stages)} stages.**",
        "",
        "| stage kind | stages | total (s) | mean (s) | max (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, ds in groups.items():
        lines.append(f"| {kind} | {len(ds)} | {sum(ds):.0f} | {sum(ds) / len(ds):.1f} | {max(ds):.1f} |")
    lines += ["", "<details><summary>every stage</summary>", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {name} | {d:.1f} |" for name, d in durations]
    lines += ["", "</details>", ""]
    if code:
        lines += ["Failed; the last lines of dvc's output:", "", "```", *tail, "```", ""]
    stamp = today.replace(" ", "_").replace(":", "")
    out = ROOT / "benchmarks" / "results" / f"pipeline_{profile}_{stamp}.md"
    out.write_text("\n".join(lines))
    print(f"total {total:.0f} s; wrote {out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
