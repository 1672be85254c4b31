"""TensorBoard events: the config as hparams values (the run-level tags are tested with the loop
in test_training.py)."""

import pytest

from onebit.training.tensorboard import EPOCH_SKIP, hparam_values, open_tensorboard


@pytest.mark.parametrize(
    "value, expected",
    [(1e-3, 1e-3), (64, 64), (True, True), ("bop", "bop"), (None, "None"), ([1, 2], "[1, 2]"), ((3, 4), "(3, 4)")],
)
def test_hparam_values_are_numbers_strings_or_booleans(value, expected):
    assert hparam_values({"key": value}) == {"key": expected}


def test_hparam_values_are_sorted_by_key():
    assert list(hparam_values({"b": 1, "a": 2})) == ["a", "b"]


def test_disabled_tensorboard_opens_nothing(tmp_path):
    assert open_tensorboard(tmp_path, False) is None and not list(tmp_path.iterdir())


def test_epoch_curves_leave_out_counters():
    assert {"epoch", "step", "seconds"} <= EPOCH_SKIP and "test_accuracy" not in EPOCH_SKIP
