"""The training knobs are declared once: the route's query parameters, the record's params and the worker's
recipe all come from ``TrainKnobs``, whose defaults are the library's but for the small-data recipe."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from adaptformer.config import AdapterConfig
from adaptformer.train import SERVABLE, TrainConfig
from adaptformer_server.app import create_app
from adaptformer_server.jobs.knobs import LIBRARY_FIELDS, SMALL_DATA, TrainKnobs
from adaptformer_server.settings import Settings


def _library(path: str) -> object:
    value: object = TrainConfig()
    for name in path.split("."):
        value = getattr(value, name)
    return value


def test_defaults_are_the_librarys_but_for_the_small_data_recipe():
    knobs = TrainKnobs()
    for knob, path in LIBRARY_FIELDS.items():
        expected = SMALL_DATA.get(knob, _library(path))
        assert getattr(knobs, knob) == expected, knob
    assert set(SMALL_DATA) <= set(LIBRARY_FIELDS)
    assert all(SMALL_DATA[k] != _library(LIBRARY_FIELDS[k]) for k in SMALL_DATA)  # no override says the same


def test_every_knob_names_a_library_field_or_says_how_examples_are_read():
    adapter = {f.name for f in dataclasses.fields(AdapterConfig)}
    recipe = {f.name for f in dataclasses.fields(TrainConfig)}
    for path in LIBRARY_FIELDS.values():
        owner, _, name = path.rpartition(".")
        assert name in (adapter if owner == "adapter" else recipe), path
    assert set(TrainKnobs.model_fields) - set(LIBRARY_FIELDS) == {"frames", "val_fraction", "description"}
    assert typing.get_args(TrainKnobs.model_fields["method"].annotation) == SERVABLE


def test_the_recipe_is_the_librarys_with_the_knobs():
    cfg = TrainKnobs(layers="0,-1", bottleneck=8, epochs=2).train_config("cpu")
    base = TrainConfig(
        adapter=AdapterConfig(bottleneck=8, scale=SMALL_DATA["scale"], layers=(0, -1)),
        epochs=2,
        batch_size=SMALL_DATA["batch_size"],
        device="cpu",
    )
    assert cfg == base
    assert TrainKnobs(layers="last:2").train_config("cpu").adapter.layers == "last:2"


@pytest.mark.parametrize("layers", ["first:0", "1,a", "somewhere", ","])
def test_layers_the_library_refuses(layers):
    with pytest.raises(ValueError):
        TrainKnobs(layers=layers).train_config("cpu")


def test_the_routes_query_parameters_are_the_knobs(tmp_path):
    schema = create_app(Settings(store=tmp_path)).openapi()
    params = schema["paths"]["/tasks/{task}/train"]["post"]["parameters"]
    query = {p["name"]: p["schema"] for p in params if p["in"] == "query"}
    assert list(query) == list(TrainKnobs.model_fields)
    for name, field in TrainKnobs.model_fields.items():
        assert query[name].get("default") == field.default, name
