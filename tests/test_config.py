"""onebit.training.config: values print and parse back, TOML written and read back, key=value
overrides, for random valid values of every key (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from onebit.models import list_models
from onebit.training import config as config_module
from onebit.training.config import (
    ALIASES,
    FIELDS,
    ConfigError,
    apply_overrides,
    defaults,
    parse_value,
    read_toml,
    to_toml,
    validate,
)

INT64 = (-(2**63), 2**63 - 1)  # TOML integers are 64-bit


def valid(key, value) -> bool:
    try:
        validate({key: value})
    except ConfigError:
        return False
    return True


def _range_of(field):
    """The field's ``Range``-like check (lo, hi, open ends, extra values), if it has one."""
    kind = type(field.default)
    check = getattr(field, "check", None)
    if check is None and kind in (int, float):
        check = getattr(config_module, "NON_NEGATIVE", None)  # numbers without a check of their own
    return check if hasattr(check, "lo") and hasattr(check, "hi") else None


def _number_strategy(field):
    kind, rng = type(field.default), _range_of(field)
    lo, hi = (rng.lo, rng.hi) if rng is not None else (-math.inf, math.inf)
    if kind is int:
        base = st.integers(INT64[0] if lo < INT64[0] else math.ceil(lo), INT64[1] if hi > INT64[1] else math.floor(hi))
    else:
        base = st.floats(
            None if math.isinf(lo) else lo,
            None if math.isinf(hi) else hi,
            exclude_min=rng is not None and rng.lo_open and not math.isinf(lo),
            exclude_max=rng is not None and rng.hi_open and not math.isinf(hi),
            allow_nan=False,
            allow_infinity=False,
        )
    also = tuple(getattr(rng, "also", ()))
    return st.one_of(base, st.sampled_from(also)) if also else base


# Names some text keys are checked against (zoo models, quantizers, constraints, devices).
NAMES = [
    *list_models(),
    *("ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign", "ste_heaviside", "ste_tern", "dorefa"),
    *("noop", "weight_clip", "auto", "none", "cpu", "cuda", "cuda:0", "cuda:12", "mps", "runs", "data/x y"),
]


def _text_strategy(field):
    """Any text where any text goes; else the known names the key accepts."""
    names = sorted({field.default, *(n for n in NAMES if valid(field.name, n))})
    if all(valid(field.name, t) for t in ("x", "a b", "é/ü", " padded ")):
        return st.one_of(st.sampled_from(names), st.text())
    return st.sampled_from(names)


def value_strategy(field):
    """Random values of ``field``'s type that ``validate`` accepts (the default among them)."""
    kind = type(field.default)
    if field.choices:
        base = st.sampled_from(field.choices)
    elif kind is bool:
        base = st.booleans()
    elif kind in (int, float):
        base = _number_strategy(field)
    else:
        assert kind is str, field
        base = _text_strategy(field)
    return st.one_of(st.just(field.default), base).filter(lambda v: valid(field.name, v))


configs = st.fixed_dictionaries({name: value_strategy(f) for name, f in FIELDS.items()})
some_values = st.fixed_dictionaries({}, optional={name: value_strategy(f) for name, f in FIELDS.items()})


def same(a, b) -> bool:
    """Equal values of the same type (so 1 != 1.0 != True, and -0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def assert_same_config(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key in want:
        assert same(got[key], want[key]), (key, got[key], want[key])


def test_every_field_has_a_strategy_and_its_default_is_valid():
    for field in FIELDS.values():
        assert type(field.default) in (bool, int, float, str), field
        assert valid(field.name, field.default), field
    validate(defaults())


@settings(max_examples=60, deadline=None)
@given(configs)
def test_printed_values_parse_back(config):
    for key, value in config.items():
        assert same(parse_value(key, str(value)), value), key
        assert same(parse_value(key, value), value), key


@settings(max_examples=60, deadline=None)
@given(configs, st.sampled_from([" ", "\t", "  "]))
def test_numbers_and_booleans_parse_with_surrounding_spaces(config, space):
    for key, value in config.items():
        if not isinstance(value, str):
            assert same(parse_value(key, f"{space}{value}{space}"), value), key


@settings(max_examples=40, deadline=None)
@given(configs, some_values)
def test_toml_round_trip(config, run):
    """The resolved config written as TOML (``to_toml``) reads back identical, types included."""
    tables = {"config": config, "run": {**run, "missing": None}}
    back = read_toml(to_toml(tables), "a written config")
    assert back.keys() == {"config", "run"}
    assert_same_config(back["config"], config)
    assert_same_config(back["run"], run)  # None is left out
    assert_same_config(validate(back["config"]), config)


@settings(max_examples=60, deadline=None)
@given(some_values, st.booleans())
def test_key_equals_value_overrides(values, use_alias):
    alias_of = {v: k for k, v in ALIASES.items()}
    items = [f"{alias_of.get(k, k) if use_alias else k}={v}" for k, v in values.items()]
    got = apply_overrides(defaults(), items)
    assert_same_config(got, {**defaults(), **values})
