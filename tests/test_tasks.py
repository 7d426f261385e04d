import pytest

from densemoe.errors import ConfigError
from densemoe.tasks import TASKS, dataset_info, tasks_for


def test_paper_task_sets():
    pascal = tasks_for("pascal-context")
    assert list(pascal) == ["semseg", "human_parts", "sal", "normals", "edge"]
    assert pascal["semseg"].channels == 21 and pascal["human_parts"].channels == 7
    nyud = tasks_for("nyud-v2")
    assert list(nyud) == ["semseg", "depth", "normals", "edge"]
    assert nyud["semseg"].channels == 40
    assert nyud["depth"].ignore_index == 0 and nyud["semseg"].ignore_index == 255


def test_headline_metrics_and_directions():
    assert TASKS["semseg"].headline == "semseg/miou" and TASKS["semseg"].higher_is_better
    assert TASKS["sal"].headline == "sal/maxf"
    assert TASKS["edge"].headline == "edge/odsf" and TASKS["edge"].higher_is_better
    assert TASKS["normals"].headline == "normals/mean_err" and not TASKS["normals"].higher_is_better
    assert TASKS["depth"].headline == "depth/rmse" and not TASKS["depth"].higher_is_better


def test_synthetic_class_counts_come_from_the_generator():
    from densemoe.data.synthetic import SYNTH_PART_CLASSES, SYNTH_SEMSEG_CLASSES

    info = dataset_info("synth-pascal")
    assert info.num_classes == {"semseg": len(SYNTH_SEMSEG_CLASSES), "human_parts": len(SYNTH_PART_CLASSES)}
    assert tasks_for("synth-nyud", ["depth", "semseg"])["semseg"].channels == len(SYNTH_SEMSEG_CLASSES)


def test_bad_names_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'pascal'.*valid: nyud-v2, pascal-context"):
        tasks_for("pascal")
    with pytest.raises(ConfigError, match="unknown task 'semseg2'.*did you mean 'semseg'"):
        tasks_for("nyud-v2", ["semseg2"])
    with pytest.raises(ConfigError, match="task 'human_parts' is not labelled in dataset 'nyud-v2'"):
        tasks_for("nyud-v2", ["human_parts"])
