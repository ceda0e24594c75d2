"""The Ray options, the ``--ray`` flags and the deployment they make. Fast: no cluster starts; the tests that
need Ray installed are marked ``ray``, the others run in the default suite (with or without Ray)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from adaptformer_server.cli import parse_args
from adaptformer_server.ray_serve import (
    RayOptions,
    RayUnavailable,
    app_builder,
    build_application,
    deployment_options,
    replica_settings,
    serve_on_ray,
)
from adaptformer_server.settings import Settings
from tests.ray.ray_support import ray_installed

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray's own pydantic deprecations
needs_ray = pytest.mark.skipif(not ray_installed(), reason="Ray Serve is not installed: pip install '.[ray]'")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("ADAPTFORMER_", "RAY_ADDRESS")):
            monkeypatch.delenv(key)


def test_the_ray_flags():
    settings, options = parse_args(["serve", "--ray", "--replicas", "3", "--store", "/shared/adapters"])
    assert options is not None and options.replicas == 3 and not options.autoscaling
    assert settings.store == Path("/shared/adapters")
    assert deployment_options(options)["num_replicas"] == 3
    assert deployment_options(options)["max_ongoing_requests"] == 256  # Ray's own default of 5 would cap batches

    _, options = parse_args(["--ray", "--min-replicas", "1", "--max-replicas", "8", "--ray-address", "auto"])
    assert options is not None and options.address == "auto"
    opts = deployment_options(options)
    assert "num_replicas" not in opts
    assert opts["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 32.0,
    }
    settings, options = parse_args(["--port", "9000"])
    assert options is None and settings.port == 9000


def test_ray_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("ADAPTFORMER_RAY_REPLICAS", "4")
    monkeypatch.setenv("ADAPTFORMER_RAY_CPUS_PER_REPLICA", "2")
    _, options = parse_args(["--ray", "--gpus-per-replica", "1"])
    assert options is not None
    assert deployment_options(options)["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert deployment_options(options)["num_replicas"] == 4
    assert replica_settings(Settings(), options).threads == 2  # torch threads follow the reserved CPUs
    assert replica_settings(Settings(threads=1), options).threads == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "3"], "--replicas: only with --ray"),
        (["--ray", "--replicas", "0"], "replicas: Input should be greater than or equal to 1"),
        (["--ray", "--min-replicas", "2"], "min_replicas needs max_replicas"),
        (["--ray", "--min-replicas", "4", "--max-replicas", "2"], "min_replicas (4) is more than max_replicas (2)"),
        (["--ray", "--replicas", "9", "--max-replicas", "2"], "replicas (9) must lie between"),
        (["--ray", "--max-ongoing-requests", "0"], "max_ongoing_requests"),
        (["--ray", "--ray-app-name", "a b"], "app_name"),
        (["--ray", "--replicas", "two"], "invalid int value"),
    ],
)
def test_bad_ray_flags_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_without_ray_installed_the_error_says_how_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "adaptformer_server.ray_deployment", raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'adaptformer-serve\[ray\]'"):
        build_application(Settings(), RayOptions())
    with pytest.raises(RayUnavailable, match="not installed"):
        serve_on_ray(Settings(), RayOptions())


def test_the_cli_reports_a_missing_ray(monkeypatch, capsys):
    from adaptformer_server import cli

    def unavailable(settings, options):
        raise RayUnavailable("Ray Serve is not installed (No module named 'ray'); pip install 'adaptformer-serve[ray]'")

    monkeypatch.setattr("adaptformer_server.ray_serve.serve_on_ray", unavailable)
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--ray"])
    assert "adaptformer-serve[ray]" in str(e.value.code)


@pytest.mark.ray
@needs_ray
def test_the_application_carries_the_options_and_settings():
    app = build_application(Settings(store="/shared/a", max_batch_size=64), RayOptions(replicas=3))
    deployment = app._bound_deployment  # what serve.run deploys
    assert deployment.name == "AdaptFormerServer"
    assert deployment.num_replicas == 3 and deployment.max_ongoing_requests == 256
    assert deployment.ray_actor_options["num_cpus"] == 1.0
    bound = deployment.init_args[0]
    assert isinstance(bound, Settings) and bound.store == Path("/shared/a") and bound.max_batch_size == 64
    assert bound.threads == 1


@pytest.mark.ray
@needs_ray
def test_the_app_builder_of_serve_run_and_config_files():
    app = app_builder({"store": "/shared/a", "replicas": 2, "max_batch_size": "16"})
    assert app._bound_deployment.num_replicas == 2
    assert app._bound_deployment.init_args[0].max_batch_size == 16
    with pytest.raises(ValueError, match="unknown argument"):
        app_builder({"stor": "/x"})
    with pytest.raises(ValueError, match="max_batch_size"):
        app_builder({"max_batch_size": 0})


@pytest.mark.ray
@needs_ray
def test_the_documented_serve_config_is_valid():
    """docs/SCALING.md's config file is one Ray Serve accepts, and its import path builds the application."""
    from ray.serve.schema import ServeDeploySchema

    text = (ROOT / "docs" / "SCALING.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = ServeDeploySchema.model_validate(yaml.safe_load(block))
    (app,) = config.applications
    assert app.import_path == "adaptformer_server.ray_serve:app_builder"
    (deployment,) = app.deployments
    assert deployment.name == "AdaptFormerServer"
    built = app_builder(dict(app.args))
    assert built._bound_deployment.name == deployment.name
