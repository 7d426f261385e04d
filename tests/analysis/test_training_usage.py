import json

import matplotlib
import numpy as np
import pandas as pd
import pytest

from densemoe.analysis import expert_usage, training
from densemoe.errors import DataError

matplotlib.use("Agg")


def _routing(tmp_path, selected, iteration=10):
    folder = tmp_path / "routing"
    folder.mkdir(exist_ok=True)
    stats = {"b1": {"selected": selected, "mean_weight": np.asarray(selected, float).tolist()}}
    data = {"iteration": iteration, "images": 4, "tasks": ["semseg", "edge"], "blocks": stats}
    (folder / f"iter_{iteration:06d}.json").write_text(json.dumps(data))
    return data


def test_curves_from_history_and_evals():
    history = pd.DataFrame({"iteration": [10, 20], "epoch": [0, 0], "lr": [1e-3, 5e-4], "loss": [3.0, 2.0],
                            "loss/semseg": [2.0, 1.5], "aux/load_balance": [0.0, 1e-4]})
    fig = training.loss_curves(history, "t")
    assert len(fig.axes[0].lines) == 3
    evals = pd.DataFrame({"iteration": [10, 20], "semseg/miou": [1.0, 2.0]})
    assert len(training.eval_curves(evals, ["semseg/miou", "depth/rmse"]).axes) == 1


def test_missing_run_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="history.csv does not exist; train the run first"):
        training.read_csv(tmp_path, "history.csv")
    with pytest.raises(DataError, match="holds no checkpoint; run `dvc repro`"):
        training.find_run("nope", tmp_path, tiny_if_missing=False)
    with pytest.raises(DataError, match="holds no routing statistics"):
        expert_usage.read_routing(tmp_path)


def test_tasks_per_expert_counts_tasks_over_threshold(tmp_path):
    # expert 0: both tasks, expert 1: semseg only, expert 2: none
    _routing(tmp_path, [[1.0, 0.9, 0.0], [0.6, 0.1, 0.4]], iteration=5)
    data = _routing(tmp_path, [[1.0, 0.9, 0.0], [0.6, 0.1, 0.4]], iteration=10)
    assert expert_usage.read_routing(tmp_path)["iteration"] == 10
    assert expert_usage.read_routing(tmp_path, 5)["iteration"] == 5
    shares = expert_usage.tasks_per_expert(data, threshold=0.5)
    assert shares.set_index("tasks")["share %"].round(2).to_dict() == {0: 33.33, 1: 33.33, 2: 33.33}
    assert expert_usage.is_routed(data) and not expert_usage.is_routed({**data, "blocks": {}})
    fig = expert_usage.activation_heatmaps(data)
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert fig.axes[1].get_ylabel() == "share of images selecting the expert"


def test_fig4b_comparison_across_runs():
    def routing(selected):
        return {"tasks": ["semseg", "edge"], "blocks": {"b1": {"selected": selected}}}

    without = routing([[1.0, 0.0], [0.0, 1.0]])  # no expert shared by both tasks
    with_gc = routing([[1.0, 1.0], [1.0, 0.0]])  # expert 0 shared by both
    shares = expert_usage.compare_tasks_per_expert({"LoRE": without, "+GC": with_gc})
    table = shares.pivot(index="run", columns="tasks", values="share %")
    assert table.loc["LoRE"].tolist() == [0.0, 100.0, 0.0] and table.loc["+GC"].tolist() == [0.0, 50.0, 50.0]
    fig = expert_usage.compare_figure(shares)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["LoRE", "+GC"]


def test_routing_entropy_uniform_and_peaked():
    data = {"tasks": ["a", "b"], "blocks": {"b1": {"mean_weight": [[0.25] * 4, [1.0, 0, 0, 0]]}}}
    summary = expert_usage.routing_summary(data).set_index("task")
    assert summary.loc["a", "entropy"] == pytest.approx(np.log(4), abs=1e-3)
    assert summary.loc["b", "entropy"] == 0.0 and summary.loc["b", "max load"] == 1.0
