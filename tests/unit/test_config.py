"""AdapterConfig: which blocks get a branch, and which values are refused."""

from __future__ import annotations

import pytest

import adaptformer as af


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ("all", [0, 1, 2, 3, 4, 5]),
        ("first:2", [0, 1]),
        ("last:2", [4, 5]),
        ("first:6", [0, 1, 2, 3, 4, 5]),
        ((3, 0, 3), [0, 3]),
        ([1, 4], [1, 4]),
        ((-1,), [5]),
        ([0, -1, -2], [0, 4, 5]),
    ],
)
def test_layers_resolve(layers: object, expected: list[int]) -> None:
    """Every way of naming layers picks the documented blocks (sorted, negatives from the end, no duplicates)."""
    assert af.AdapterConfig(layers=layers).resolve_layers(6) == expected


@pytest.mark.parametrize(
    "layers", ["none", "first", "first:", "first:0", "last:-1", "middle:2", "first:x", "", [], [1.5]]
)
def test_bad_layers_refused(layers: object) -> None:
    """A malformed layer selection is refused when the config is built, naming the bad value."""
    with pytest.raises(ValueError, match="layers"):
        af.AdapterConfig(layers=layers)


@pytest.mark.parametrize("layers", ["first:7", "last:9", (6,), (-7,), (0, 10)])
def test_layers_out_of_range_refused(layers: object) -> None:
    """Asking for blocks the model does not have is a ValueError, not a silent clip."""
    with pytest.raises(ValueError, match="layers"):
        af.AdapterConfig(layers=layers).resolve_layers(6)


@pytest.mark.parametrize("bottleneck", [0, -1, 513, 10_000, 64.0, "64", True])
def test_bottleneck_outside_range_refused(bottleneck: object) -> None:
    """d^ must be an integer in 1..512."""
    with pytest.raises(ValueError, match="bottleneck"):
        af.AdapterConfig(bottleneck=bottleneck)


@pytest.mark.parametrize("bottleneck", [1, 64, 512])
def test_bottleneck_bounds_accepted(bottleneck: int) -> None:
    """Both ends of 1..512 are valid."""
    assert af.AdapterConfig(bottleneck=bottleneck).bottleneck == bottleneck


@pytest.mark.parametrize(
    ("field", "value"), [("mode", "serial"), ("adapter_input", "ln2"), ("dropout", 1.0), ("dropout", -0.1)]
)
def test_bad_knobs_refused(field: str, value: object) -> None:
    """Unknown mode, adapter input or a dropout outside [0, 1) are refused with the field's name."""
    with pytest.raises(ValueError, match=field):
        af.AdapterConfig(**{field: value})


def test_defaults_are_the_papers() -> None:
    """Defaults: d^=64, s=0.1 fixed, all blocks, parallel, LN2 input."""
    c = af.AdapterConfig()
    assert (c.bottleneck, c.scale, c.learnable_scale, c.layers, c.mode, c.adapter_input) == (
        64,
        0.1,
        False,
        "all",
        "parallel",
        "ln",
    )


@pytest.mark.parametrize(
    "config",
    [
        af.AdapterConfig(),
        af.AdapterConfig(bottleneck=8, scale=0.5, learnable_scale=True, layers=[0, -1], mode="sequential"),
        af.AdapterConfig(layers="last:3", adapter_input="own_ln", dropout=0.1),
    ],
)
def test_dict_round_trip(config: af.AdapterConfig) -> None:
    """A config survives to_json / from_dict unchanged (it is what adapter files store)."""
    import json

    assert af.AdapterConfig.from_dict(json.loads(config.to_json())) == config


def test_dict_round_trip_ignores_unknown_keys() -> None:
    """A config read from a newer file keeps the fields this version knows and drops the others."""
    c = af.AdapterConfig(bottleneck=8, layers=(0, 2), learnable_scale=True)
    assert af.AdapterConfig.from_dict({**c.to_dict(), "future_knob": 1}) == c
    assert set(c.to_dict()) == {"bottleneck", "scale", "learnable_scale", "layers", "mode", "adapter_input", "dropout"}
