"""WeightClip and the constraint registry."""

import pytest
import torch

from onebit import constraints


@pytest.mark.parametrize("clip", [0.75, 1.0, 2.0])
def test_weight_clip_equals_clamp(clip):
    w = torch.linspace(-3, 3, 13)
    expected = w.clamp(-clip, clip)
    out = constraints.WeightClip(clip)(w)
    assert out is w and torch.equal(w, expected)


def test_get():
    assert isinstance(constraints.get("weight_clip"), constraints.WeightClip)
    assert constraints.get(None) is None
    fn = lambda w: w  # noqa: E731
    assert constraints.get(fn) is fn


@pytest.mark.parametrize("bad, message", [
    ("clip", "unknown constraint 'clip'; valid names: weight_clip"),
    (3, "cannot use 3 as a constraint"),
])
def test_get_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        constraints.get(bad)


def test_weight_clip_rejects_non_positive():
    with pytest.raises(ValueError, match="clip_value=0 must be > 0"):
        constraints.WeightClip(0)
