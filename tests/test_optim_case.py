"""CaseOptimizer: routing, errors, and behaving as one torch optimizer (larq/optimizers_test.py)."""

import copy

import pytest
import torch
from torch import nn

import onebit as ob
from onebit.optim import Bop, CaseOptimizer


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        ob.QuantLinear(6, 8, bias=False, kernel_quantizer="noop"),
        nn.BatchNorm1d(8),
        ob.QuantLinear(8, 3, input_quantizer="ste_sign", kernel_quantizer="noop"),
    )
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return model, x, y


def bop_adam(model):
    return CaseOptimizer(
        Bop(ob.binary_parameters(model), gamma=1e-2, threshold=1e-6),
        torch.optim.Adam(ob.real_parameters(model), lr=1e-2),
    )


def train(model, opt, x, y, steps):
    losses = []
    for _ in range(steps):

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        losses.append(opt.step(closure).item())
    return losses


def test_steps_every_sub_optimizer_with_one_closure_call():
    model, x, y = model_and_data()
    opt = bop_adam(model)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    bias_before = model[2].bias.detach().clone()
    loss = opt.step(closure)
    assert len(calls) == 1 and loss.requires_grad
    assert set(model[0].weight.detach().unique().tolist()) <= {-1.0, 1.0}
    assert not torch.equal(model[2].bias, bias_before)


def test_param_groups_are_the_sub_optimizers_groups():
    model, _, _ = model_and_data()
    opt = bop_adam(model)
    groups = opt.param_groups
    assert len(groups) == 2
    assert groups[0] is opt.optimizers[0].param_groups[0]
    assert groups[1] is opt.optimizers[1].param_groups[0]


def test_state_dict_round_trip_continues_identically():
    model, x, y = model_and_data()
    opt = bop_adam(model)
    train(model, opt, x, y, 3)
    twin_model = copy.deepcopy(model)
    twin = bop_adam(twin_model)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert train(model, opt, x, y, 3) == train(twin_model, twin, x, y, 3)
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_with_wrong_number_of_optimizers():
    model, _, _ = model_and_data()
    opt = bop_adam(model)
    with pytest.raises(ValueError, match="1 optimizers; this CaseOptimizer has 2"):
        opt.load_state_dict({"optimizers": [opt.optimizers[0].state_dict()]})


def test_lr_scheduler_on_one_sub_optimizer_and_on_the_whole():
    model, x, y = model_and_data()
    opt = bop_adam(model)
    bop, adam = opt.optimizers
    gamma_sched = torch.optim.lr_scheduler.StepLR(bop, step_size=1, gamma=0.1)
    train(model, opt, x, y, 1)
    gamma_sched.step()
    assert bop.gamma == pytest.approx(1e-3) and adam.param_groups[0]["lr"] == pytest.approx(1e-2)
    model, x, y = model_and_data()
    opt = bop_adam(model)
    bop, adam = opt.optimizers
    both = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5)
    assert bop.gamma == pytest.approx(5e-3) and adam.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert both.get_last_lr() == pytest.approx([5e-3, 5e-3])


def test_works_with_grad_scaler():
    model, x, y = model_and_data()
    opt = bop_adam(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        scaler.step(opt)
        scaler.update()
    # Bop saw unscaled gradients: its momentum is of the gradient's order, not 1024x larger.
    m = opt.optimizers[0].state[model[0].weight]["exp_avg"]
    assert 0 < m.abs().max() < 1.0


def test_routing_with_predicates_and_default():
    model, _, _ = model_and_data()
    binary = {id(p) for p in ob.binary_parameters(model)}
    opt = CaseOptimizer(
        (lambda p: id(p) in binary, lambda ps: Bop(ps)),
        default=lambda ps: torch.optim.Adam(ps),
        params=model.parameters(),
    )
    assert isinstance(opt.optimizers[0], Bop) and isinstance(opt.optimizers[1], torch.optim.Adam)
    assert len(opt.optimizers[0].param_groups[0]["params"]) == 2
    assert len(opt.optimizers[1].param_groups[0]["params"]) == len(list(model.parameters())) - 2


def test_parameter_claimed_twice():
    model, _, _ = model_and_data()
    with pytest.raises(ValueError, match="claimed by optimizer #0 \\(Bop\\) and optimizer #1"):
        CaseOptimizer(Bop(ob.binary_parameters(model)), torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="'0.weight' is claimed by predicates #\\[0, 1\\]"):
        CaseOptimizer(
            (lambda p: True, lambda ps: Bop(ps)),
            (lambda p: True, lambda ps: Bop(ps)),
            params=model.named_parameters(),
        )


def test_optimizer_that_receives_no_parameters():
    model, _, _ = model_and_data()
    with pytest.raises(ValueError, match="optimizer #1 receives no parameters"):
        CaseOptimizer(
            (lambda p: True, lambda ps: Bop(ps)),
            (lambda p: False, lambda ps: Bop(ps)),
            params=model.parameters(),
        )


def test_parameter_claimed_by_none_without_default():
    model, _, _ = model_and_data()
    with pytest.raises(ValueError, match="'1.weight' is claimed by no optimizer and there is no default"):
        CaseOptimizer(Bop(ob.binary_parameters(model)), params=model.named_parameters())
    binary = {id(p) for p in ob.binary_parameters(model)}
    with pytest.raises(ValueError, match="claimed by no predicate"):
        CaseOptimizer((lambda p: id(p) in binary, lambda ps: Bop(ps)), params=model.parameters())


def test_type_errors():
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer nor a \\(predicate, factory\\) pair"):
        CaseOptimizer(Bop([nn.Parameter(torch.ones(1))]), 42)
    with pytest.raises(ValueError, match="at least one optimizer"):
        CaseOptimizer()
    with pytest.raises(ValueError, match="need params="):
        CaseOptimizer((lambda p: True, lambda ps: Bop(ps)))


def test_zero_grad_and_state():
    model, x, y = model_and_data()
    opt = bop_adam(model)
    train(model, opt, x, y, 1)
    assert model[0].weight in opt.state and model[2].bias in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
