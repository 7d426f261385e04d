from pathlib import Path

import pytest
import yaml

from densemoe.config import AugmentParams, Params, data_root, from_dict, load_params
from densemoe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.profile == "smoke"
    assert params.active.datasets == ("synth-pascal", "synth-nyud")
    assert data_root(params, base=ROOT) == ROOT / "data" / "smoke"
    assert params.data.archives["nyud-v2"].archive == "NYUDv2.tar.gz"


def _params(tmp_path, edit):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_names_it_and_lists_valid(tmp_path):
    path = _params(tmp_path, lambda d: d["data"]["augment"].update(scale_mni=0.5))
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'scale_mni' in params.data.augment; did you mean "
        r"'scale_min'\? \(valid: .*scale_max.*\)",
    ):
        load_params(path)


def test_unknown_dataset_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'synth-pascl'.*did you mean 'synth-pascal'"):
        load_params(_params(tmp_path, lambda d: d["profiles"]["smoke"].update(datasets=["synth-pascl"])))
    with pytest.raises(ConfigError, match="unknown profile 'gpu'.*valid: paper, smoke"):
        load_params(_params(tmp_path, lambda d: d.update(profile="gpu")))


def test_yaml_float_string_is_rejected_with_hint():
    with pytest.raises(
        ConfigError, match=r"params.scale_min must be float, got '1e-4' \(write floats as 1.0e-4"
    ):
        from_dict(AugmentParams, {"scale_min": "1e-4"})


def test_types_are_checked_and_converted():
    aug = from_dict(AugmentParams, {"scale_min": 1, "crop": [64, 96], "flip": False})
    assert aug.scale_min == 1.0 and isinstance(aug.scale_min, float)
    assert aug.crop == (64, 96)
    with pytest.raises(ConfigError, match="params.crop must be a list of 2 values"):
        from_dict(AugmentParams, {"crop": [64]})
    with pytest.raises(ConfigError, match="params.flip must be bool"):
        from_dict(AugmentParams, {"flip": "yes"})
    with pytest.raises(ConfigError, match="params.seed must be int"):
        from_dict(Params, {"seed": True})


def test_missing_params_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_params(bad)


def test_unknown_name_among_many_lists_the_closest_few():
    from densemoe.errors import MAX_LISTED, unknown

    names = [f"mlore_tiny_synth_pascal_top{k}" for k in range(30)]
    message = str(unknown("experiment", "mlore_tiny_synth_pascal_tpo3", names))
    assert "did you mean 'mlore_tiny_synth_pascal_top3'?" in message
    assert "(closest of 30: " in message and message.count("mlore_tiny") == MAX_LISTED + 2  # name, hint, list
    assert "(valid: a, b)" in str(unknown("x", "c", ["b", "a"]))
