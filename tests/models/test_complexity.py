"""FLOPs as the paper counts them (re-parameterised MACs / 2^30), on the meta device."""

import pytest
from model_helpers import TINY_MLORE

from densemoe.models import create_model
from densemoe.models.complexity import PAPER_ROWS, flop_count, measure, paper_gflops, param_counts


def test_tiny_counts_and_reparam_is_cheaper():
    model = create_model("mlore", **TINY_MLORE)
    plain, merged = flop_count(model, reparameterize=False), flop_count(model)
    assert 0 < merged < plain
    counts = param_counts(model)
    assert counts["total"] == pytest.approx(counts["backbone"] + counts["decoder"])
    assert paper_gflops(2 * 2**30) == 1.0


@pytest.mark.parametrize(
    "row",
    [r for r in PAPER_ROWS if r.preset in ("mlore_vitl16_pascal", "baseline_vitb16_pascal")],
    ids=lambda r: r.preset,
)
def test_paper_flops_within_3_percent(row):
    got = measure(row)
    assert abs(got["gflops_rel_diff"]) < 3, got
