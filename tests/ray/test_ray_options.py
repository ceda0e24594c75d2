"""The Ray options, the ``--ray`` flags and the deployment they make. Fast: no cluster starts; the tests that
need Ray installed are marked ``ray``, the others run in the default suite (with or without Ray)."""

from __future__ import annotations

import os
import sys
from collections import Counter
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


def test_task_routing_is_the_default_and_load_routing_is_rays():
    opts = deployment_options(RayOptions())
    router = opts["request_router_config"]
    assert router["request_router_class"] == "adaptformer_server.ray_deployment.TaskAffinityRouter"
    assert router["request_router_kwargs"] == {"imbalance": 4}
    assert router["request_routing_stats_period_s"] <= 1.0  # replicas report their resident tasks every second
    _, options = parse_args(["--ray", "--routing", "load"])
    assert options is not None and "request_router_config" not in deployment_options(options)
    _, options = parse_args(["--ray", "--routing-imbalance", "16"])
    assert options is not None
    assert deployment_options(options)["request_router_config"]["request_router_kwargs"] == {"imbalance": 16}


# -- the task-aware router, without a cluster --------------------------------------------------------------------
def _pending(query: bytes = b"", model_id: str = ""):
    import pickle

    from ray.serve._private.common import RequestMetadata, StreamingHTTPRequest
    from ray.serve.request_router import PendingRequest

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": query, "headers": []}
    arg = pickle.dumps(StreamingHTTPRequest(asgi_scope=scope, proxy_actor_name="proxy"))
    meta = RequestMetadata(request_id="r", internal_request_id="i", multiplexed_model_id=model_id)
    return PendingRequest(args=[arg], kwargs={}, metadata=meta)


def _router(queue: dict[str, int], imbalance: int = 4):
    from types import SimpleNamespace

    from adaptformer_server.ray_deployment import TaskAffinityRouter

    router = object.__new__(TaskAffinityRouter)  # no Ray machinery: choose_replicas only reads these
    router.initialize_state(imbalance=imbalance)
    router._replica_queue_len_cache = SimpleNamespace(get=lambda rid: queue.get(rid.unique_id))
    return router


def _replica(name: str, tasks: list[str] | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=name), routing_stats={"tasks": tasks or []})


@pytest.mark.ray
@needs_ray
async def test_the_task_of_a_request():  # async: a PendingRequest makes a future on the running loop
    from adaptformer_server.ray_deployment import request_task

    assert request_task(_pending(b"task=digits&top_k=3")) == "digits"
    assert request_task(_pending(b"top_k=3")) == ""
    assert request_task(_pending(b"task=digits", model_id="emoji")) == "emoji"  # serve_multiplexed_model_id first
    assert request_task(None) == ""


@pytest.mark.ray
@needs_ray
async def test_a_task_goes_to_its_resident_replica_then_its_home_unless_too_busy():
    replicas = [_replica("a", ["digits"]), _replica("b", ["emoji", "digits"]), _replica("c")]
    queue = {"a": 3, "b": 1, "c": 0}
    router = _router(queue)
    ranks = await router.choose_replicas(replicas, _pending(b"task=emoji"))
    assert [r.replica_id.unique_id for r in ranks[0]] == ["b"]  # resident there; the others are the fallback rank
    assert {r.replica_id.unique_id for r in ranks[1]} == {"a", "c"}
    ranks = await router.choose_replicas(replicas, _pending(b"task=digits"))
    assert {r.replica_id.unique_id for r in ranks[0]} == {"a", "b"}  # Ray takes the less busy of the two
    # resident nowhere: the same home replica every time, and tasks spread over homes
    homes = {}
    for i in range(300):
        (first, *_) = await router.choose_replicas(replicas, _pending(f"task=t{i}".encode()))
        assert len(first) == 1
        homes[f"t{i}"] = first[0].replica_id.unique_id
        again = await router.choose_replicas(list(reversed(replicas)), _pending(f"task=t{i}".encode()))
        assert again[0][0].replica_id.unique_id == homes[f"t{i}"]
    share = Counter(homes.values())
    assert set(share) == {"a", "b", "c"} and min(share.values()) > 60, share
    # too busy: the resident replica has more than `imbalance` requests beyond the least busy one
    queue.update(b=9, c=2)
    (only,) = await router.choose_replicas(replicas, _pending(b"task=emoji"))
    assert {r.replica_id.unique_id for r in only} == {"a", "b", "c"}  # Ray takes the least busy
    # no task: by load alone, in a random order (the first of equals would get every request of an idle app)
    firsts = Counter()
    for _ in range(200):
        (only,) = await router.choose_replicas(replicas, _pending(b""))
        assert len(only) == 3
        firsts[only[0].replica_id.unique_id] += 1
    assert len(firsts) == 3
    # a replica whose load is unknown is asked first (in its own rank), not passed over for a known busy one
    del queue["c"]
    ranks = await router.choose_replicas(replicas, _pending(b""))
    assert [[r.replica_id.unique_id for r in rank] for rank in ranks[:1]] == [["c"]] and len(ranks[1]) == 3


@pytest.mark.ray
@needs_ray
async def test_a_replica_reports_its_resident_tasks(tmp_path):
    """What ``record_routing_stats`` sends Ray's routers: the tasks resident in the app's bank (a change of the
    runtime's layout must fail here, not silently turn task routing into routing by home replica alone)."""
    from adaptformer_server.app import create_app
    from adaptformer_server.ray_deployment import resident_tasks
    from tests.support import png, serving

    app = create_app(Settings(store=tmp_path / "store", slots=2))
    assert resident_tasks(app) == []  # not open yet
    async with serving(app) as client:
        for task in ("digits", "emoji", "fashion"):
            r = await client.post(f"/predict?task={task}", files={"image": ("x.png", png(1, 28), "image/png")})
            assert r.status_code == 200, r.text
        assert resident_tasks(app) == ["emoji", "fashion"]  # 2 slots: the least recently used went out
