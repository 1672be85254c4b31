"""Precision: bf16 autocast keeps weights, gradients, Bop's moving average and batch-norm
statistics in fp32, the sign STE exact, and trains the small model to the accuracy of fp32
(within the spread of two fp32 seeds); ``auto`` takes bf16 only where it is native."""

import csv

import pytest
import torch

import onebit as ob
from onebit.recipes import load_recipe
from onebit.training import step as step_module
from onebit.training import train
from onebit.training.step import autocast, cpu_bf16_flags, make_train_step, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vpopcntdq", ["avx512_bf16"]),
        ("fpu avx2 amx_bf16 amx_tile", ["amx_bf16"]),
        ("fpu avx2 fma", []),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    info = f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n"
    assert cpu_bf16_flags(info) == native


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_bf16_on_a_cpu_only_where_it_is_native(monkeypatch, native):
    monkeypatch.setattr(step_module, "cpu_bf16_flags", lambda: ["avx512_bf16"] if native else [])
    chosen, why = resolve_precision("auto", CPU)
    assert chosen == ("bf16" if native else "fp32") and why.startswith("auto")
    assert resolve_precision("fp32", CPU)[0] == "fp32" and resolve_precision("bf16", CPU)[0] == "bf16"


def test_sign_ste_under_autocast_is_exact():
    x = torch.randn(64, 32, requires_grad=True)
    with autocast(CPU, "bf16"):
        y = ob.quantizers.SteSign()(x @ torch.eye(32))  # the matmul runs in bf16
    assert set(y.unique().tolist()) <= {-1.0, 1.0}
    y.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def test_a_bf16_step_keeps_weights_gradients_bop_state_and_batch_norm_in_fp32():
    torch.manual_seed(0)
    model = ob.create_model("small_cnn", kernel_quantizer="noop", kernel_constraint=None)
    bop = ob.optim.Bop(ob.binary_parameters(model), gamma=1e-3, threshold=1e-6)
    optimizer = ob.optim.CaseOptimizer(bop, torch.optim.Adam(ob.real_parameters(model), lr=1e-2))
    step = make_train_step(model, optimizer, precision="bf16", device=CPU)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss, correct = step(x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and 0 <= int(correct) <= 16
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    for p in ob.binary_parameters(model):
        assert bop.state[p]["exp_avg"].dtype == torch.float32
        assert set(p.unique().tolist()) <= {-1.0, 1.0}  # Bop keeps the kernels +/-1
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean.dtype == m.running_var.dtype == torch.float32


def _final(tmp_path, precision, seed):
    config = dict(load_recipe("mnist-bop").config)
    config.update(
        out=str(tmp_path / f"{precision}-{seed}"),
        plots=False,
        tensorboard=False,
        threads=2,
        epochs=3,
        max_steps=60,
        bn_reestimate=0,
        eval_every=3,
        precision=precision,
        seed=seed,
    )
    s = train(config, recipe="mnist-bop", verbose=False)
    rows = list(csv.DictReader(open(f"{s['run_dir']}/metrics.csv")))
    return s["test_accuracy"], [float(r["train_loss"]) for r in rows]


def test_bf16_trains_the_small_model_as_fp32_does(tmp_path):
    """180 Bop + Adam steps of the main job: the bf16 run's test accuracy and loss curve are as
    close to fp32's (seed 0) as a second fp32 seed is, give or take two points."""
    acc32, loss32 = _final(tmp_path, "fp32", 0)
    acc_other, loss_other = _final(tmp_path, "fp32", 1)
    acc16, loss16 = _final(tmp_path, "bf16", 0)
    spread = abs(acc32 - acc_other)
    assert acc32 > 0.8 and abs(acc16 - acc32) <= spread + 0.02, (acc32, acc_other, acc16)
    for a, b, c in zip(loss32, loss_other, loss16):
        assert abs(c - a) <= abs(b - a) + 0.05, (loss32, loss_other, loss16)


def test_the_compile_key_compiles_the_network_and_the_header_says_so(tmp_path, monkeypatch):
    """``compile=true`` hands the trained network to torch.compile (stood in for here: compiling
    takes minutes on a shared CPU); the header names the precision and the compile."""
    import io

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    config = dict(load_recipe("mnist-bop").config)
    config.update(out=str(tmp_path), plots=False, tensorboard=False, threads=1, epochs=1, max_steps=2)
    out = io.StringIO()
    train(dict(config, compile=True, precision="bf16", bn_reestimate=0), recipe="mnist-bop", stream=out)
    assert [type(m).__name__ for m in compiled if isinstance(m, torch.nn.Module)] == ["Sequential"]
    assert "precision bf16 (set), model compiled (torch.compile)" in out.getvalue()
