"""Integer thresholds: the folded rule gives the quantizer's level on every reachable dot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from onebit.engine.thresholds import level_thresholds, sign_level, sign_thresholds
from onebit.kernels.bits import EngineError
from onebit.quantizers import DoReFa


def _bn(channels, seed, dims):
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, eps=1e-4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 3)
        bn.running_var.copy_(torch.rand(channels, generator=g) * 4 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=g))  # some negative, some near 0
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.eval()


def _dorefa_level(bits):
    quantizer = DoReFa(bits, "activations")
    n = 2**bits - 1
    return n, lambda v: torch.round(quantizer(v) * n).to(torch.int64)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 60),
    channels=st.integers(1, 9),
    bits=st.sampled_from([0, 1, 2, 3]),  # 0: sign()
    scaled=st.booleans(),
    dims=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_the_rule_gives_the_quantizers_level_on_every_dot(k, channels, bits, scaled, dims, seed):
    g = torch.Generator().manual_seed(seed)
    alpha = (torch.rand(channels, generator=g) + 0.05).numpy() / 10 if scaled else None
    bias = torch.randn(channels, generator=g).numpy() if scaled else None
    bn = _bn(channels, seed, dims)
    n, level_of = (1, sign_level) if bits == 0 else _dorefa_level(bits)
    sgn, thr, increasing = level_thresholds("x", k, channels, n, level_of, alpha, bias, bn)
    d = torch.arange(-k, k + 1, dtype=torch.float32)[:, None].expand(-1, channels)
    v = d * torch.from_numpy(alpha) if scaled else d.clone()
    v = v + torch.from_numpy(bias) if scaled else v
    with torch.no_grad():
        x = v[:, :, None, None] if dims == 2 else v
        want = level_of(bn(x).reshape(v.shape)).numpy()
    got = ((sgn * d.numpy().astype(np.int64))[:, :, None] >= thr[None]).sum(-1)
    assert np.array_equal(got, want)
    assert np.array_equal(increasing, sgn > 0)


def test_sign_thresholds_are_the_one_level_case():
    bn = _bn(5, 1, 2)
    sgn, thr, inc = sign_thresholds("x", 20, 5, bn=bn)
    sgn1, thr1, inc1 = level_thresholds("x", 20, 5, 1, sign_level, bn=bn)
    assert np.array_equal(sgn, sgn1) and np.array_equal(thr, thr1[:, 0]) and np.array_equal(inc, inc1)
    assert (sgn < 0).any() and (sgn > 0).any()  # the seed gives both directions


def test_a_level_that_is_not_monotone_in_the_dot_is_refused():
    with pytest.raises(EngineError, match=r"layer 'conv': batch norm of channel 0 is not monotone"):
        level_thresholds("conv", 3, 1, 1, lambda v: (v.abs() < 1).to(torch.int64))
