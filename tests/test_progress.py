"""The epoch progress: a tqdm bar with ETA, rate and named metrics on a terminal, one plain line
per epoch otherwise, nothing when disabled."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onebit.training.progress import PERCENT, Progress, format_metrics


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_epoch(stream, enabled=True, total=20, start=0):
    p = Progress(total, "epoch 1/3", stream, enabled=enabled, start=start)
    for i in range(start, total):
        p.update(i + 1, **({"loss": 0.5 - i / 100, "acc": 0.5 + i / 100} if (i + 1) % 5 == 0 else {}))
        if i == 3:
            p.update(i + 1, data_wait=0.125)  # an extra metric by name, passed once
    p.finish("loss 0.3100  test 91.00%", data_wait=0.125)
    return p


def test_terminal_draws_a_bar_with_eta_rate_and_metrics():
    out = Terminal()
    p = run_epoch(out)
    text = out.getvalue()
    redraws = text.split("\r")
    assert len(redraws) > 2, text
    last_bar = [r for r in redraws if "|" in r][-1]
    assert "20/20" in last_bar and "steps/s" in last_bar and "<" in last_bar  # elapsed<remaining
    # every metric passed so far is shown, data_wait included though it was passed only once
    assert "loss 0.31" in last_bar and "acc 69.00%" in last_bar and "data wait 12.5%" in last_bar
    assert text.endswith("epoch 1/3 loss 0.3100  test 91.00%  data wait 12.5%\n")
    assert p.tty and p.bar is None  # closed


def test_not_a_terminal_writes_one_plain_line_per_epoch():
    out = io.StringIO()
    p = run_epoch(out)
    assert not p.tty
    assert out.getvalue() == "epoch 1/3 loss 0.3100  test 91.00%  data wait 12.5%\n"


@pytest.mark.parametrize("stream", [Terminal(), io.StringIO()])
def test_disabled_writes_nothing(stream):
    p = run_epoch(stream, enabled=False)
    assert stream.getvalue() == "" and p.bar is None


def test_resumed_epoch_starts_at_its_batch():
    out = Terminal()
    p = Progress(20, "epoch 2/3", out, start=12)
    assert p.bar.n == 12 and "12/20" in out.getvalue()
    p.update(13)
    assert p.bar.n == 13
    p.finish("done")


def test_a_closed_stream_is_not_a_terminal():
    stream = io.StringIO()
    stream.close()
    assert not Progress(3, "x", stream).tty


@pytest.mark.parametrize(
    "metrics, text",
    [
        ({"loss": 0.312345, "acc": 0.9123}, "loss 0.3123  acc 91.23%"),
        ({"data_wait": 0.0314, "lr": 1e-3}, "data wait 3.1%  lr 0.001"),
        ({"loss": None, "phase": "eval"}, "phase eval"),
        ({}, ""),
    ],
)
def test_format_metrics(metrics, text):
    assert format_metrics(metrics) == text


@given(name=st.sampled_from(sorted(PERCENT)), value=st.floats(0, 1))
def test_fractions_are_drawn_in_percent(name, value):
    text = format_metrics({name: value})
    assert text.endswith("%") and abs(float(text.split()[-1][:-1]) - 100 * value) <= 0.05 + 1e-9
