import doctest
import json

import pytest

import densemoe.metrics.mtl_gain as mtl_gain
from densemoe.errors import DensemoeError
from densemoe.metrics.mtl_gain import delta_m, delta_m_from_files, delta_m_terms
from densemoe.tasks import tasks_for


def test_docstring_worked_example_runs():
    result = doctest.testmod(mtl_gain, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


def test_sign_conventions():
    st = {"semseg/miou": 50.0, "depth/rmse": 0.5, "normals/mean_err": 20.0, "edge/odsf": 80.0}
    better = {"semseg/miou": 55.0, "depth/rmse": 0.45, "normals/mean_err": 18.0, "edge/odsf": 88.0}
    terms = delta_m_terms(better, st, tasks_for("nyud-v2"))
    # higher-is-better up 10 % and lower-is-better down 10 %: every term is +10
    assert terms == pytest.approx({"semseg": 10.0, "depth": 10.0, "normals": 10.0, "edge": 10.0})
    # swapped roles: the multi-task model is now worse on both, so both terms are negative
    assert delta_m(st, better, ["semseg", "depth"]) == pytest.approx((-100 * 5 / 55 - 100 * 0.05 / 0.45) / 2)
    assert delta_m(st, st, tasks_for("nyud-v2")) == 0.0
    worse_rmse = {**st, "depth/rmse": 0.6}
    assert delta_m(worse_rmse, st, ["depth"]) == pytest.approx(-20.0)


def test_from_files_and_missing_baseline(tmp_path):
    def write(name, data):
        (tmp_path / name).write_text(json.dumps(data))
        return tmp_path / name

    mt = write("mt.json", {"semseg/miou": 44.0, "normals/mean_err": 19.0, "edge/odsf": 70.0})
    files = {"semseg": write("st_semseg.json", {"semseg/miou": 40.0}),
             "normals": write("st_normals.json", {"normals/mean_err": 20.0})}
    out = delta_m_from_files(mt, files)
    assert out["mtl/delta_m"] == pytest.approx((10.0 + 5.0) / 2)
    assert out["mtl/delta_m/semseg"] == pytest.approx(10.0)
    assert out["mtl/delta_m/normals"] == pytest.approx(5.0)
    missing = tmp_path / "st_edge.json"
    with pytest.raises(DensemoeError, match=r"st_edge\.json"):
        delta_m_from_files(mt, {**files, "edge": missing})
    with pytest.raises(DensemoeError, match=r"no single-task baseline file given for task 'edge'"):
        delta_m_from_files(mt, files, tasks=["semseg", "edge"])
    with pytest.raises(DensemoeError, match="has no 'normals/mean_err'"):
        delta_m_from_files(mt, {"normals": write("bad.json", {"semseg/miou": 1.0})})
