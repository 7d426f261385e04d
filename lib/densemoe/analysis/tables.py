"""Ours-vs-paper tables: relative differences, and markdown, CSV and LaTeX output (no extra dependencies).

Used by ``densemoe.models.complexity`` (Tables 1, 2, 5, 7) and meant for the later ablation tables::

    df = ours_vs_paper(rows, {"FLOPs (G)": ("gflops", "paper_gflops")})
    write_table(df, "reports/efficiency", "table2", title="Table 2 …", notes=["…"])

``ours_vs_paper`` places, for every metric, the paper's value, ours and the relative difference in %
((ours − paper) / paper · 100, empty where the paper gives none) side by side. Markdown is written by hand
(``DataFrame.to_markdown`` needs ``tabulate``, which is not a dependency) and so is LaTeX (``booktabs``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

PAPER, OURS, DIFF = "paper", "ours", "Δ %"


def rel_diff(ours: float | None, paper: float | None, digits: int = 2) -> float | None:
    """(ours − paper) / paper in %, rounded; None if either is missing or the paper's value is 0."""
    if _missing(ours) or _missing(paper) or paper == 0:
        return None
    return round((ours - paper) / paper * 100, digits)


def ours_vs_paper(
    rows: pd.DataFrame | Iterable[Mapping],
    metrics: Mapping[str, tuple[str, str]],
    keep: Iterable[str] = (),
    digits: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """A table with the ``keep`` columns, then for each ``metric: (ours_col, paper_col)`` three columns
    ``"<metric> paper"``, ``"<metric> ours"``, ``"<metric> Δ %"``; ours rounded to ``digits[metric]``."""
    src = pd.DataFrame(list(rows)) if not isinstance(rows, pd.DataFrame) else rows
    out = src[list(keep)].copy()
    for name, (ours_col, paper_col) in metrics.items():
        ours = src[ours_col].astype(float)
        if digits and name in digits:
            ours = ours.round(digits[name])
        out[f"{name} {PAPER}"] = src[paper_col]
        out[f"{name} {OURS}"] = ours
        out[f"{name} {DIFF}"] = [rel_diff(o, p) for o, p in zip(src[ours_col], src[paper_col], strict=True)]
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cell(v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.2e}"
    return str(v)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""
    cols = [str(c) for c in df.columns]
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


_TEX = str.maketrans(
    {
        "%": r"\%",
        "&": r"\&",
        "_": r"\_",
        "#": r"\#",
        "Δ": r"$\Delta$",
        "×": r"$\times$",
        "²": r"$^2$",
        "^": r"\^{}",
        "→": r"$\to$",
        "·": r"$\cdot$",
        "≈": r"$\approx$",
    }
)


def latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A ``booktabs`` table environment."""
    spec = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    body = [" & ".join(_cell(v).translate(_TEX) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{caption.translate(_TEX)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(str(c).translate(_TEX) for c in df.columns) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    title: str = "",
    notes: Iterable[str] = (),
    tex: bool = True,
) -> list[Path]:
    """Write ``<name>.md`` (title, table, notes), ``<name>.csv`` and, if ``tex``, ``<name>.tex``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{name}.md"
    head = [f"# {title}", ""] if title else []
    md.write_text("\n".join([*head, markdown(df), "", *(f"- {n}" for n in notes)]).rstrip() + "\n")
    csv = out_dir / f"{name}.csv"
    df.to_csv(csv, index=False)
    paths = [md, csv]
    if tex:
        paths.append(out_dir / f"{name}.tex")
        paths[-1].write_text(latex(df, caption=title, label=f"tab:{name}"))
    return paths
