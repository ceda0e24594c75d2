"""Ray Serve replicas: does a second replica pay, does task-aware routing cut page-ins, what does Ray's proxy cost.

    python -m benchmarks.ray_replicas                        # writes docs/benchmarks/ray_replicas.{json,md}
    python -m benchmarks.ray_replicas --quick                # a smoke run (short phases), nothing written

Needs the ray extra (``pip install '.[ray]'``) and timm. Starts a Ray cluster on 127.0.0.1 (tests/ray/ray_support.py:
loopback only, stopped at the end). The backbone is one where inference dominates: timm ``vit_small_patch16_224``
with random weights (speed does not depend on their values) at 224x224, one torch thread per replica, on one store
of 1,000 adapters (bottleneck 8) and 32 slots per replica. Every Ray setup is this project's application
(``build_application``, as ``adaptformer serve --ray`` deploys it) under its own route prefix on one proxy.

1. **Throughput**: a light closed-loop load (``--clients`` clients, one 224x224 JPEG per request, 16 tasks in turn,
   all resident) for ``--duration`` s per setup, setups interleaved over ``--rounds`` rounds, medians reported:
   ``ray 1`` and ``ray 2`` (1 and 2 replicas behind Ray's HTTP proxy), ``plain 1`` (one ``adaptformer serve
   --threads 1``, no Ray) and ``plain 2`` (two of them, the load generator's clients split over both). Ratios:
   ray 2 / ray 1 (scaling, target >= 1.7) and ray n / plain n (proxy overhead, target >= 0.85). The answers per
   replica come from the ``X-AdaptFormer-Replica`` header; CPU seconds per request of Ray's proxy process, the
   replicas and the load generator come from /proc (where the time goes).
2. **Page-ins**: two 2-replica applications, ``--routing task`` and ``--routing load`` (Ray's default router),
   requests for 1,000 tasks drawn from a Zipf law (exponent ``--zipf``), ``--zipf-requests`` measured after as
   many warm-up requests, interleaved over ``--zipf-rounds`` rounds; page-ins per 1,000 requests from each replica's
   ``adaptformer_page_ins`` counter (target: task routing at most half of load routing).

The load generator runs on the same machine: on a 2-core host it, Ray's proxy, Ray's controller and the replicas
share the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from benchmarks.machine import cpu_model
from tests.ray.ray_support import REPLICA_HEADER, cluster_pids, interfaces, ray_cluster, replica_pid
from tests.support import ServerProcess

ROOT = Path(__file__).resolve().parents[1]

MODEL = "vit_small_patch16_224"
TASKS = 1000
SLOTS = 32
THROUGHPUT_TASKS = 16


# -- set-up ------------------------------------------------------------------------------------------------------
def make_store(workdir: Path, tasks: int) -> tuple[Path, Path]:
    """Random ViT-S/16 weights and ``tasks`` adapters (bottleneck 8, random values) made on them, in ``workdir``
    (kept: a later run with the same ``--cache`` reuses them; the replicas only read the store)."""
    weights, store = workdir / "vit_small.safetensors", workdir / "adapters"
    if (workdir / "complete").is_file():
        return weights, store
    workdir.mkdir(parents=True, exist_ok=True)
    import timm
    import torch
    from safetensors.torch import save_file

    import adaptformer as af
    from adaptformer.adapter_file import task_to_bytes
    from adaptformer.preprocess import spec_from_model
    from adaptformer_server.backbone import load_backbone
    from adaptformer_server.settings import Settings

    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    vit, _ = load_backbone(Settings(backbone=MODEL, weights=weights))
    spec = spec_from_model(vit)
    import adaptformer.fingerprint

    fingerprint = adaptformer.fingerprint.backbone_fingerprint(vit)  # once, not per adapter (it hashes the backbone)
    adaptformer.fingerprint.backbone_fingerprint = lambda model: fingerprint
    af.add_adapters(vit, af.AdapterConfig(bottleneck=8), num_classes=10)
    trainable = [p for p in vit.parameters() if p.requires_grad]
    store.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(tasks):
            for p in trainable:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            name = task_name(i)
            (store / f"{name}.safetensors").write_bytes(task_to_bytes(af.extract_task(vit, name, input_spec=spec)))
    (workdir / "complete").touch()
    return weights, store


def task_name(i: int) -> str:
    return f"t{i:04d}"


def jpegs(n: int) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        rng = random.Random(i)
        img = Image.frombytes("RGB", (224, 224), bytes(rng.getrandbits(8) for _ in range(224 * 224 * 3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def server_settings(weights: Path, store: Path, poll_ms: float):
    from adaptformer_server.settings import Settings

    return Settings(backbone=MODEL, weights=weights, store=store, seed_demo=False, slots=SLOTS, max_wait_ms=5,
                    log_level="warning", store_poll_ms=poll_ms)  # fmt: skip


def plain_server(weights: Path, store: Path, poll_ms: float, env: dict[str, str], log: Path) -> ServerProcess:
    """``adaptformer serve`` without Ray, in the cluster's environment; not waited for (the three start at once)."""
    args = ["--host", "127.0.0.1", "--backbone", MODEL, "--weights", weights, "--store", store, "--no-seed-demo",
            "--slots", SLOTS, "--threads", "1", "--max-wait-ms", "5", "--store-poll-ms", poll_ms,
            "--log-level", "warning"]  # fmt: skip
    return ServerProcess(args, log=log, base_env=env, ready=False)


# -- measuring ---------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(word: str, among: set[int]) -> list[int]:
    out = []
    for pid in among:
        try:
            if word in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                out.append(pid)
        except OSError:
            continue
    return out


async def load(urls: list[str], tasks: list[str], clients: int, duration: float, warmup: float, images: list[bytes],
               watch: dict[str, list[int]] | None = None) -> dict:  # fmt: skip
    """Closed loop: ``clients`` loops (client i on ``urls[i % len(urls)]``), each sends its next request when its
    last one answered; task of the k-th request: ``tasks[k % len(tasks)]``. CPU seconds of the processes in
    ``watch`` (and of this one) over the measured window."""
    latencies: list[float] = []
    replicas: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    counter = iter(range(10**9))
    watch = dict(watch or {})
    watch["load generator"] = [os.getpid()]
    cpu: dict[str, float] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + duration

        async def meter() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            before = {k: sum(map(cpu_seconds, v)) for k, v in watch.items()}
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            cpu.update({k: round(sum(map(cpu_seconds, v)) - before[k], 2) for k, v in watch.items()})

        async def loop(i: int) -> None:
            url = urls[i % len(urls)]
            while (t0 := time.perf_counter()) < end:
                k = next(counter)
                files = {"image": ("x.jpg", images[k % len(images)], "image/jpeg")}
                try:
                    r = await c.post(f"{url}/predict?task={tasks[k % len(tasks)]}", files=files)
                    status = str(r.status_code)
                except httpx.TransportError as e:
                    r, status = None, type(e).__name__
                t1 = time.perf_counter()
                if t0 < measure_from or t1 > end:
                    continue
                if status == "200" and r is not None:
                    latencies.append(t1 - t0)
                    replicas[r.headers.get(REPLICA_HEADER, "?")] += 1
                else:
                    errors[status] += 1

        await asyncio.gather(meter(), *(loop(i) for i in range(clients)))
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1) if latencies else 0.0

    n = len(latencies)
    return {
        "requests": n,
        "rps": round(n / duration, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": dict(errors),
        "per_replica": dict(replicas.most_common()),
        "cpu_s": cpu,
        "cpu_ms_per_request": {k: round(1000 * v / n, 1) for k, v in cpu.items()} if n else {},
    }


async def page_ins(url: str, want: int) -> dict[str, float]:
    """Each replica's ``adaptformer_page_ins`` total (asks /metrics until ``want`` replicas have answered)."""
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=60) as c:
        for _ in range(200):
            r = await c.get(f"{url}/metrics")
            m = re.search(r"^adaptformer_page_ins_total ([0-9.e+]+)$", r.text, re.M)
            seen[r.headers[REPLICA_HEADER]] = float(m.group(1)) if m else 0.0
            if len(seen) >= want:
                break
    return seen


async def zipf_run(url: str, sequence: list[str], clients: int, images: list[bytes]) -> dict:
    """The requests of ``sequence`` in order over ``clients`` loops; page-ins and answers per replica."""
    before = await page_ins(url, 2)
    replicas: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    it = iter(enumerate(sequence))
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as c:

        async def loop() -> None:
            for k, task in it:
                files = {"image": ("x.jpg", images[k % len(images)], "image/jpeg")}
                r = await c.post(f"{url}/predict?task={task}", files=files)
                if r.status_code == 200:
                    replicas[r.headers[REPLICA_HEADER]] += 1
                else:
                    errors[str(r.status_code)] += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    seconds = time.perf_counter() - start
    after = await page_ins(url, 2)
    per = {rep: after[rep] - before.get(rep, 0.0) for rep in after}
    total = sum(per.values())
    return {
        "requests": len(sequence),
        "page_ins": total,
        "page_ins_per_1000": round(1000 * total / len(sequence), 1),
        "page_ins_per_replica": sorted(per.values(), reverse=True),
        "per_replica": dict(replicas.most_common()),
        "errors": dict(errors),
        "rps": round(len(sequence) / seconds, 2),
    }


def zipf_sequence(n: int, exponent: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranks = list(range(TASKS))
    rng.shuffle(ranks)  # which task is the most popular: not the first in file order
    weights = [1 / (r + 1) ** exponent for r in range(TASKS)]
    return [task_name(ranks[r]) for r in rng.choices(range(TASKS), weights=weights, k=n)]


def simulate(exponent: float, replicas: int, affine: bool, requests: int = 40_000, seed: int = 0) -> float:
    """Page-ins per 1,000 requests of ``replicas`` LRU banks of ``SLOTS`` slots (the second half of ``requests``
    Zipf-drawn requests): each task on one replica (``affine``, an ideal task router) or each request on a random
    replica (balancing by load alone). What the routing can achieve at best, without the load's noise."""
    rng = random.Random(seed)
    sequence = rng.choices(range(TASKS), weights=[1 / (r + 1) ** exponent for r in range(TASKS)], k=requests)
    banks: list[dict[int, None]] = [{} for _ in range(replicas)]
    misses = 0
    for k, task in enumerate(sequence):
        bank = banks[hash((task, seed)) % replicas if affine else rng.randrange(replicas)]
        if task in bank:
            del bank[task]  # re-inserted below: most recently used last
        else:
            misses += k >= requests // 2
            if len(bank) >= SLOTS:
                del bank[next(iter(bank))]
        bank[task] = None
    return round(1000 * misses / (requests - requests // 2), 1)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


# -- the run -----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, result: dict) -> None:
    with ray_cluster(num_cpus=8) as cluster:
        t = time.perf_counter()
        weights, store = make_store(args.cache, TASKS)
        print(f"store of {TASKS} adapters in {time.perf_counter() - t:.0f} s", flush=True)
        images = jpegs(32)
        os.environ.update(cluster.env)
        import ray

        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        try:
            measure(args, result, weights, store, cluster, images)
        finally:
            ray.shutdown()  # before the cluster stops: a driver that loses it exits the process


def measure(args: argparse.Namespace, result: dict, weights: Path, store: Path, cluster, images: list[bytes]) -> None:
    from ray import serve

    from adaptformer_server.ray_serve import RayOptions, build_application

    with TemporaryDirectory() as tmp:
        serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port})
        proxy = f"http://127.0.0.1:{cluster.http_port}"
        settings = server_settings(weights, store, args.poll_ms)

        pids: dict[str, list[int]] = {}  # url -> its replicas' process ids

        def deploy(name: str, replicas: int, routing: str) -> str:
            t = time.perf_counter()
            options = RayOptions(replicas=replicas, cpus_per_replica=1, routing=routing,
                                 routing_imbalance=args.routing_imbalance)  # fmt: skip
            app = build_application(settings, options)
            serve.run(app, name=name, route_prefix=f"/{name}")
            url = f"{proxy}/{name}"
            # every replica answers before measuring (the proxy learns of replicas a moment after they start)
            seen: set[str] = set()
            deadline = time.monotonic() + 300
            while len(seen) < replicas and time.monotonic() < deadline:
                try:
                    r = httpx.get(f"{url}/readyz", timeout=30)
                except httpx.TransportError:
                    time.sleep(0.5)
                    continue
                if r.status_code == 200:
                    seen.add(r.headers[REPLICA_HEADER])
            print(
                f"{name}: {replicas} replica(s), routing {routing}, up in {time.perf_counter() - t:.0f} s", flush=True
            )
            pids[url] = [replica_pid(rep) for rep in seen]
            return url

        throughput_tasks = [task_name(i) for i in range(THROUGHPUT_TASKS)]
        runs: dict[str, list[dict]] = {}
        if not args.skip_throughput:
            urls = {"ray 1": [deploy("one", 1, "task")], "ray 2": [deploy("two", 2, "task")]}
            plains = [plain_server(weights, store, args.poll_ms, cluster.env, Path(tmp) / f"plain{i}.log")
                      for i in range(3)]  # fmt: skip
            for plain in plains:
                plain.wait_ready(timeout=300, interval=0.5)
                pids[plain.url] = [plain.pid]
            urls["plain 1"] = [plains[0].url]
            urls["plain 2"] = [plains[1].url, plains[2].url]
            proxy_pids = pids_named("ProxyActor", cluster_pids(cluster.log.parent))
            order = list(urls)
            try:
                for rnd in range(args.rounds):
                    for name in order if rnd % 2 == 0 else order[::-1]:
                        watch = {"replicas": [pid for url in urls[name] for pid in pids[url]]}
                        if name.startswith("ray"):
                            watch["ray proxy"] = proxy_pids
                        r = asyncio.run(load(urls[name], throughput_tasks, args.clients, args.duration, args.warmup,
                                             images, watch))  # fmt: skip
                        runs.setdefault(name, []).append(r)
                        print(f"round {rnd + 1} {name}: {r['rps']} req/s, per replica {r['per_replica']}, "
                              f"cpu ms/request {r['cpu_ms_per_request']}", flush=True)  # fmt: skip
            finally:
                for plain in plains:
                    plain.stop(timeout=60)
                serve.delete("one")
                serve.delete("two")
        result["throughput"] = runs

        zipf: dict[str, list[dict]] = {}
        if not args.skip_zipf:
            urls = {"task routing": deploy("affine", 2, "task"), "load routing": deploy("load", 2, "load")}
            order = list(urls)
            for rnd in range(args.zipf_rounds):
                for name in order if rnd % 2 == 0 else order[::-1]:
                    seq = zipf_sequence(2 * args.zipf_requests, args.zipf, seed=rnd)
                    asyncio.run(zipf_run(urls[name], seq[: args.zipf_requests], args.clients, images))  # warm-up
                    r = asyncio.run(zipf_run(urls[name], seq[args.zipf_requests :], args.clients, images))
                    zipf.setdefault(name, []).append(r)
                    print(f"round {rnd + 1} {name}: {r}", flush=True)
            serve.delete("affine")
            serve.delete("load")
        result["zipf_runs"] = zipf
        serve.shutdown()


def summarize(result: dict) -> dict:
    s: dict = {}
    runs = result["throughput"]
    for name, rs in runs.items():
        s[name] = {
            "rps_median": median([r["rps"] for r in rs]),
            "rps_runs": [r["rps"] for r in rs],
            "p50_ms_median": median([r["p50_ms"] for r in rs]),
            "shares": [
                sorted((round(v / r["requests"], 3) for v in r["per_replica"].values()), reverse=True)
                for r in rs
                if r["requests"]
            ],
            "cpu_ms_per_request_median": {
                k: median([r["cpu_ms_per_request"].get(k, 0.0) for r in rs]) for k in rs[0]["cpu_ms_per_request"]
            },
        }

    def paired(a: str, b: str) -> dict | None:
        if a not in runs or b not in runs:
            return None
        ratios = [x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b], strict=False) if y["rps"]]
        return {"median": median(ratios), "runs": [round(x, 3) for x in ratios]}

    s["ratios"] = {
        "ray 2 / ray 1": paired("ray 2", "ray 1"),
        "ray 1 / plain 1": paired("ray 1", "plain 1"),
        "ray 2 / plain 2": paired("ray 2", "plain 2"),
        "plain 2 / plain 1": paired("plain 2", "plain 1"),
    }
    z = result.get("zipf_runs")
    if z:
        s["zipf"] = {name: {"page_ins_per_1000_median": median([r["page_ins_per_1000"] for r in rs]),
                            "page_ins_per_1000_runs": [r["page_ins_per_1000"] for r in rs],
                            "rps_median": median([r["rps"] for r in rs])} for name, rs in z.items()}  # fmt: skip
        if "task routing" in z and "load routing" in z:
            ratios = [a["page_ins"] / b["page_ins"] for a, b in zip(z["task routing"], z["load routing"], strict=False)
                      if b["page_ins"]]  # fmt: skip
            s["zipf"]["task / load page-ins"] = {"median": median(ratios), "runs": [round(x, 3) for x in ratios]}
    return s


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    lines = [
        "# Ray Serve replicas: scaling, task-aware routing, the proxy's cost",
        "",
        f"`{result['command']}` on {result['date']}: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, "
        f"load average {m['load_before']} before and {m['load_after']} after (the machine was shared with other "
        f"work); Ray {result['versions']['ray']}, torch {result['versions']['torch']}, timm "
        f"{result['versions']['timm']}; network interfaces: {', '.join(m['interfaces'])}. Backbone {MODEL} "
        f"(random weights) at 224x224, one torch thread per replica, {TASKS} adapters (bottleneck 8) on one store, "
        f"{SLOTS} slots per replica, store poll every {result['poll_ms']:.0f} ms. Load: {result['clients']} "
        f"closed-loop clients in one process on the same machine, one 224x224 JPEG per request. "
        f"{result['rounds']} rounds, setups interleaved; medians.",
        "",
    ]
    if result.get("throughput"):
        lines += [
            f"## Throughput ({result['duration_s']} s measured per setup and round after {result['warmup_s']} s, "
            f"{THROUGHPUT_TASKS} tasks in turn)",
            "",
            "| setup | requests/s (median) | per round | p50 ms | answers per replica (share, per round) | "
            "CPU ms per request (median) |",
            "|---|---:|---|---:|---|---|",
        ]
        for name in ("plain 1", "ray 1", "plain 2", "ray 2"):
            if name not in s:
                continue
            r = s[name]
            shares = "; ".join("/".join(f"{x:.2f}" for x in sh) for sh in r["shares"])
            cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_request_median"].items())
            lines.append(f"| {name} | {r['rps_median']} | {', '.join(map(str, r['rps_runs']))} | "
                         f"{r['p50_ms_median']} | {shares} | {cpu} |")  # fmt: skip
        lines += ["", "| ratio | median | per round | target |", "|---|---:|---|---|"]
        targets = {"ray 2 / ray 1": ">= 1.7", "ray 1 / plain 1": ">= 0.85", "ray 2 / plain 2": ">= 0.85",
                   "plain 2 / plain 1": "(reference: the same without Ray)"}  # fmt: skip
        for name, r in s["ratios"].items():
            if r:
                lines.append(f"| {name} | {r['median']} | {', '.join(map(str, r['runs']))} | {targets[name]} |")
    if result.get("zipf_runs"):
        z = s["zipf"]
        lines += [
            "",
            f"## Page-ins: task-aware vs load routing (2 replicas, {TASKS} tasks, Zipf exponent {result['zipf']}, "
            f"{result['zipf_requests']} requests measured after as many warm-up requests, {result['zipf_rounds']} rounds, "
            f"--routing-imbalance {result.get('routing_imbalance', 4)})",
            "",
            "| routing | page-ins per 1,000 requests (median) | per round | page-ins per replica | answers per "
            "replica | requests/s |",
            "|---|---:|---|---|---|---|",
        ]
        for name in ("task routing", "load routing"):
            rs = result["zipf_runs"].get(name, [])
            lines.append(
                f"| {name} | {z[name]['page_ins_per_1000_median']} | "
                f"{', '.join(map(str, z[name]['page_ins_per_1000_runs']))} | "
                f"{'; '.join('/'.join(str(int(x)) for x in r['page_ins_per_replica']) for r in rs)} | "
                f"{'; '.join('/'.join(map(str, r['per_replica'].values())) for r in rs)} | "
                f"{', '.join(str(r['rps']) for r in rs)} |"
            )
        if "task / load page-ins" in z:
            r = z["task / load page-ins"]
            lines += ["", f"Task / load page-ins: median **{r['median']}** (per round {r['runs']}; target <= 0.5)."]
    sim = s.get("simulated_page_ins_per_1000")
    if sim:
        lines += [
            "",
            f"Simulated (no server: LRU banks of {SLOTS} slots, the same Zipf mix, 20,000 requests after 20,000 of "
            "warm-up; an ideal task router vs each request on a random replica), page-ins per 1,000 requests:",
            "",
            "| replicas | load routing | task routing | task / load |",
            "|---:|---:|---:|---:|",
        ]
        for n, r in sim.items():
            lines.append(f"| {n} | {r['load']} | {r['task']} | {r['task'] / r['load']:.2f} |")
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured per setup and round")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the task mix")
    parser.add_argument("--zipf-requests", type=int, default=500, help="measured per routing and round")
    parser.add_argument("--zipf-rounds", type=int, default=2)
    parser.add_argument("--routing-imbalance", type=int, default=4, help="of the task-routed applications")
    parser.add_argument("--poll-ms", type=float, default=2000, help="store poll interval of every replica")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/adaptformer-ray-replicas"),
                        help="where the backbone weights and the 1,000 adapters are made once and kept")  # fmt: skip
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-zipf", action="store_true")
    parser.add_argument("--quick", action="store_true", help="short phases, one round, nothing written")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "ray_replicas")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds, args.zipf_rounds, args.zipf_requests = 8.0, 3.0, 1, 1, 200

    result: dict = {
        "command": " ".join(["python -m benchmarks.ray_replicas", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "clients": args.clients,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "zipf": args.zipf,
        "zipf_requests": args.zipf_requests,
        "zipf_rounds": args.zipf_rounds,
        "routing_imbalance": args.routing_imbalance,
        "poll_ms": args.poll_ms,
        "versions": {p: metadata.version(p) for p in ("ray", "torch", "timm")},
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu_model(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_before": round(os.getloadavg()[0], 2),
            "interfaces": interfaces(),
        },
    }
    signal.signal(signal.SIGTERM, _interrupt)  # stop the cluster (ray_cluster's exit) on a plain kill too
    run(args, result)
    result["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    result["summary"] = summarize(result)
    result["summary"]["simulated_page_ins_per_1000"] = {
        n: {"load": simulate(args.zipf, n, False), "task": simulate(args.zipf, n, True)} for n in (2, 4, 8)
    }
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
        print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
