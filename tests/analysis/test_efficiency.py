"""Efficiency analysis (notebook 06): Fig. 3 (right) counted by hand, re-parameterised outputs, speed."""

import pandas as pd
import torch
from matplotlib.figure import Figure
from model_helpers import randomize_bn

from densemoe.analysis import efficiency
from densemoe.analysis.data_summary import save
from densemoe.models import create_model
from densemoe.models.presets import spread_ranks

#: A 4-block, 32-wide ViT on 32×32 images: 2×2 tokens, 4 taps → 8 MLoRE modules; decoder width C = 8
#: (tiny_synth: 5 tasks, task rank R = 16, expert ranks spread 4..32).
TINY = dict(
    backbone="vit_tiny_patch16_384",
    backbone_args=dict(depth=4, embed_dim=32, num_heads=2),
    img_size=(32, 32),
    channels=8,
)


def hand_count(C: int, T: int, hw: int, ranks: tuple[int, ...], R: int, generic: bool) -> int:
    """Parameters of one module, part by part (mlore_block.py, routing.py), router 'basic+pos'."""
    c4, N, S = C // 4, len(ranks), sum(ranks)
    n = T * (C * C + C)  # task_proj f_{t,1×1}: T 1×1 convs C→C
    n += (9 * C * C + C) if generic else 0  # f_g: 3×3 conv C→C
    if N:  # W_n 3×3 C→r_n and M_n 1×1 r_n→C with biases, bn_all_t (γ, β over T·C)
        n += 9 * C * S + S + S * C + N * C + 2 * T * C
    n += T * (C * c4 + c4) + 2 * T * c4 + T * (c4 * c4 + c4)  # basic branch: 1×1, LN, 1×1
    n += T * hw + T + 2 * T * C + T * (C * c4 + c4)  # position branch: Linear(hw→1), LN over C, 1×1 C→C/4
    n += T * (2 * c4 * (2 * N + 1) + 2 * N + 1)  # prediction 1×1 2C/4 → 2N+1
    n += (T * (9 * C * R + R) + T * (R * C + C)) if R else 0  # f_se^t: 3×3 C→R, 1×1 R→C
    return n + 2 * T * C + T * (C * C + C)  # bn_t and Q_t


def test_experts_params_equal_the_hand_count():
    experts = (0, 1, 3)
    frame = efficiency.experts_params("tiny_synth", experts, **TINY)
    assert list(frame["experts"]) == [0, 0, 1, 1, 3, 3]
    assert set(frame["modules"]) == {8}
    lo, hi = efficiency.BASES["tiny_synth"][2]
    for n in experts:
        got = frame[frame["experts"] == n].set_index("method")["params"]
        mlore = hand_count(8, 5, 4, spread_ranks(n, lo, hi), R=16, generic=True)
        moe = hand_count(8, 5, 4, (8,) * n, R=0, generic=False)
        assert got[efficiency.MLORE] == 8 * mlore, n
        assert got[efficiency.MOE] == 8 * moe, n


def test_fig3_right_curves_vitb():
    frame = efficiency.experts_params()
    assert list(frame["experts"].unique()) == list(efficiency.EXPERTS)
    wide = frame.pivot(index="experts", columns="method", values="params")
    for method in (efficiency.MLORE, efficiency.MOE):
        assert wide[method].is_monotonic_increasing and wide[method].is_unique
    assert (wide.loc[5:, efficiency.MOE] > wide.loc[5:, efficiency.MLORE]).all()
    assert wide.loc[0, efficiency.MOE] < wide.loc[0, efficiency.MLORE]  # no generic / task path in the MoE
    # the N = 15 point is the paper's configuration, the others the experts{N} ablation presets
    for n, name in ((15, "mlore_vitb16_pascal"), (5, "mlore_vitb16_pascal_experts5")):
        with torch.device("meta"):
            assert efficiency.module_params(create_model(name)) == (8, wide.loc[n, efficiency.MLORE])
    assert frame["channels"].eq(640).all()
    assert any("C = 640" in n for n in efficiency.experts_notes(frame))


def test_reparameterised_outputs_equal_plain():
    model = create_model("mlore_tiny_synth", **TINY)
    torch.manual_seed(1)
    randomize_bn(model)
    model.eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = efficiency.output_diff(model(image), model.reparameterize()(image))
    assert diff["max_rel_diff"] <= 1e-5
    ones = {"a": torch.ones(2), "b": torch.full((3,), 2.0)}
    assert efficiency.output_diff(ones, {"a": torch.ones(2), "b": torch.full((3,), 1.5)}) == dict(
        max_abs_diff=0.5, max_rel_diff=0.25
    )


def test_reparam_speed_table_and_figure(tmp_path):
    threads = torch.get_num_threads()
    frame, info = efficiency.reparam_speed(
        "mlore_tiny_synth", batch=2, repeats=1, warmup=0, threads=1, **TINY
    )
    assert torch.get_num_threads() == threads
    assert list(frame.columns) == ["measurement", "plain_ms", "reparam_ms", "speedup"]
    assert len(frame) == 2 and (frame[["plain_ms", "reparam_ms"]] >= 0).all().all()
    assert info["max_rel_diff"] <= 1e-5 and info["modules"] == 8 and info["threads"] == 1
    assert (info["batch"], info["height"], info["width"]) == (2, 32, 32)
    assert info["cpu"] and info["cores"] >= 1
    notes = efficiency.speed_notes(info)
    assert "this machine's CPU" in notes[0] and info["cpu"] in notes[0]
    fig = efficiency.speed_figure(frame, info)
    assert "this machine's CPU" in fig.axes[0].get_title()
    assert save(fig, tmp_path / "speed.png").stat().st_size > 0


def test_timed_is_the_median_after_warmup():
    calls = []
    assert efficiency.timed(lambda: calls.append(1), warmup=2, repeats=3) >= 0
    assert len(calls) == 5
    calls.clear()
    medians = efficiency.timed_together([lambda: calls.append("a"), lambda: calls.append("b")], repeats=2)
    assert len(medians) == 2 and calls == ["a", "b"] * 3  # in turn, warm-up included


def test_experts_figure(tmp_path):
    frame = pd.DataFrame(
        dict(
            base="tiny_synth",
            channels=8,
            experts=[0, 0, 5, 5],
            modules=8,
            params_m=[1.0, 0.5, 2.0, 4.0],
            method=[efficiency.MLORE, efficiency.MOE] * 2,
        )
    )
    fig = efficiency.experts_figure(frame)
    assert isinstance(fig, Figure)
    assert "Fig. 3" in fig.axes[0].get_title() and "8 MLoRE modules" in fig.axes[0].get_ylabel()
    assert len(fig.axes[0].get_lines()) >= 2
    assert save(fig, tmp_path / "experts.png").stat().st_size > 0


def test_complexity_rows_tiny_only():
    rows = efficiency.complexity_rows(paper_size=False)
    assert [r["preset"] for r in rows] == [r.preset for r in efficiency.TINY_ROWS]
    params = {r["row"]: r["params"] for r in rows}
    assert params["Baseline"] < params["+ LoRE"] < params["+ GC"] < params["+ SPE"] < params["+ MoE"]
    assert len({r["gflops"] for r in rows if r["mode"] == "reparam"}) == 1  # every path merges (Table 2)


def test_complexity_rows_paper_rows_first(monkeypatch):
    monkeypatch.setattr(efficiency, "measure", lambda row: dict(preset=row.preset))
    rows = efficiency.complexity_rows(paper_size=True)
    assert len(rows) == len(efficiency.PAPER_ROWS) + len(efficiency.TINY_ROWS)
    assert rows[0]["preset"] == efficiency.PAPER_ROWS[0].preset
