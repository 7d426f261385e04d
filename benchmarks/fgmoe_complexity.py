"""Trainable vs total parameters and FLOPs of the FGMoE presets, next to MLoRE's, as a dated benchmark file.

The counting lives in :mod:`densemoe.models.fgmoe_complexity` (which says how FLOPs are counted); the same
table is part of ``reports/efficiency`` (``python -m densemoe.models.complexity``).

Usage: ``python benchmarks/fgmoe_complexity.py [OUT_DIR]``; writes ``fgmoe_complexity_<date>.md`` there
(default ``benchmarks/results``) and prints it.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from densemoe.models.fgmoe_complexity import decoder_rows


def render(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = [
        "# FGMoE vs MLoRE: trainable and total parameters, FLOPs",
        "",
        f"Date {datetime.date.today().isoformat()}; counted on the meta device (no weights, no timing), "
        "batch 1 at each dataset's input size; produced by `benchmarks/fgmoe_complexity.py`. Parameters in "
        "millions; GFLOPs = multiply-accumulates / 2^30 (the MLoRE paper's unit; MLoRE re-parameterised). "
        "FGMoE's architecture is inferred (README, FGMoE section); the paper gives no counts to compare.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0] if argv else Path(__file__).resolve().parent / "results")
    text = render(decoder_rows())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"fgmoe_complexity_{datetime.date.today().isoformat()}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
