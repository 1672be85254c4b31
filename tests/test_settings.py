"""onebit.settings: every process-wide switch in one place, settable for a block and per thread."""

import threading

import pytest

from onebit import kernels, settings, xnor


def test_defaults_and_the_switch_table():
    assert settings.get("popcount_forward") == "auto"
    assert set(settings.SWITCHES) == {"popcount_forward"}
    for name in settings.SWITCHES:  # each switch is documented in the module's table
        assert f"``{name}``" in settings.__doc__


def test_set_returns_the_previous_values_and_restores():
    previous = settings.set(popcount_forward=False)
    try:
        assert previous == {"popcount_forward": "auto"} and settings.get("popcount_forward") == "off"
        assert xnor.get_mode() == "off"
    finally:
        settings.set(**previous)
    assert settings.get("popcount_forward") == "auto"


def test_override_holds_for_the_block_and_this_thread_only():
    seen = {}

    def other_thread():
        seen["other"] = settings.get("popcount_forward")

    with settings.override(popcount_forward="off"):
        assert settings.get("popcount_forward") == "off"
        with settings.override(popcount_forward="auto"):
            assert settings.get("popcount_forward") == "auto"
        assert settings.get("popcount_forward") == "off"
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert seen["other"] == "auto", "another thread keeps the process value"
    assert settings.get("popcount_forward") == "auto"


def test_override_is_undone_by_an_exception():
    with pytest.raises(KeyError):
        with settings.override(popcount_forward="off"):
            raise KeyError("boom")
    assert settings.get("popcount_forward") == "auto"


@pytest.mark.parametrize(
    "call",
    [
        lambda: settings.get("fast_mode"),
        lambda: settings.set(fast_mode=1),
        lambda: settings.override(fast_mode=1).__enter__(),
    ],
)
def test_unknown_setting_names_the_allowed_ones(call):
    with pytest.raises(ValueError, match="unknown onebit setting 'fast_mode'; settings: popcount_forward"):
        call()


def test_bad_values_are_one_line_errors(monkeypatch):
    with pytest.raises(ValueError, match="popcount_forward='fast' is not one of 'auto', 'on', 'off', True, False"):
        settings.set(popcount_forward="fast")
    monkeypatch.setattr(kernels, "_jit", False)  # as without numba
    with pytest.raises(RuntimeError, match="popcount_forward='on' needs numba.*'auto' or 'off'"):
        settings.override(popcount_forward="on").__enter__()
    assert settings.get("popcount_forward") == "auto"
