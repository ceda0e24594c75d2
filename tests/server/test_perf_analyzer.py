"""Triton's perf_analyzer (the binary of the ``tritonclient`` 2.40.0 wheel, a dev dependency) against a real server
process: it reads the model metadata and Triton's model configuration, then drives ``infer`` with its own
generated FP32 data and with ``--input-data`` JSON holding encoded images, at several concurrencies.

Missing (the binary, Debian's libb64-0d, PyPI's nvidia-cuda-runtime-cu12), the test skips with the reason; under
``CI=true`` it fails instead, as the Makefile's ``system-deps`` does for the system packages.
"""

from __future__ import annotations

import os

import httpx
import pytest

from benchmarks.perf_analyzer import Missing, bytes_input_data, find, run
from tests.support import adapter_bytes, live_server, png

pytestmark = pytest.mark.e2e

# Count windows of 20 requests; a stability bound no window misses, so the first three windows are the ones
# reported and every request perf_analyzer completed is in its count.
WINDOWS = ("--measurement-mode", "count_windows", "--measurement-request-count", "20", "-s", "10000")


@pytest.fixture(scope="module")
def perf_analyzer():
    try:
        return find()
    except Missing as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {e}")
        pytest.skip(str(e))


def served(url: str, task: str) -> dict[str, float]:
    """The server's ``adaptformer_predict_requests_total`` of ``task``, by status."""
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("adaptformer_predict_requests_total{") and f'task="{task}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[status] = float(line.rsplit(" ", 1)[1])
    return out


def check_counts(url: str, before: dict[str, float], reported: int, concurrency: list[int]) -> None:
    """perf_analyzer's request count is the server's, less the requests its clients had in flight outside the
    reported windows (at most two a client: one measured here, two in the benchmark's noisiest time windows,
    docs/benchmarks/perf_analyzer.md); no request failed."""
    after = served(url, "shirts")
    assert set(after) == {"200"}, after
    delta = after["200"] - before.get("200", 0.0)
    assert reported <= delta <= reported + 2 * sum(concurrency), (reported, delta)


def test_perf_analyzer_drives_the_v2_routes(tmp_path, perf_analyzer):
    def adapters(vit):
        return {"shirts": adapter_bytes(vit, "shirts", seed=1, winner=2)}

    with live_server(tmp_path, adapters) as url:
        # its own generated data: zeros for `input` (the header makes `input` the one input the model lists)
        levels = [1, 4]
        before = served(url, "shirts")
        generated = run(perf_analyzer, url, "shirts", levels, window=WINDOWS, timeout=240)
        assert [r["concurrency"] for r in generated.rows] == levels, generated.output
        assert all(r["images_s"] > 0 and r["requests"] >= 60 for r in generated.rows), generated.rows
        check_counts(url, before, generated.requests, levels)

        # encoded images from --input-data JSON for `image`; `input`, optional, is not sent
        data = bytes_input_data([png(1), png(2)], tmp_path / "images.json")
        before = served(url, "shirts")
        images = run(perf_analyzer, url, "shirts", [2], data=data, window=WINDOWS, timeout=240)
        assert "Successfully read data for 1 stream/streams with 2 step/steps" in images.output, images.output
        assert images.rows[0]["images_s"] > 0 and images.rows[0]["requests"] >= 60, images.rows
        check_counts(url, before, images.requests, [2])
