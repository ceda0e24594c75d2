"""GET /adapters/{task} tells a caller what the task answers and what input it expects."""

from __future__ import annotations

from adaptformer.adapter_file import task_to_bytes
from adaptformer_server.app import create_app
from tests.support import make_task, serving


async def test_adapter_info_has_description_and_input(vit, store, make_settings):
    task = make_task(vit, "ink", seed=3)
    task.info.description = "digit written in ink"
    task.info.input_note = "black ink on white paper"
    (store / "ink.safetensors").write_bytes(task_to_bytes(task))
    (store / "plain.safetensors").write_bytes(task_to_bytes(make_task(vit, "plain", seed=4)))
    async with serving(create_app(make_settings(), backbone=vit)) as client:
        info = (await client.get("/adapters/ink")).json()
        assert info["description"] == "digit written in ink"
        spec = task.info.input
        assert info["input"] == {
            "size": spec.size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "interpolation": spec.interpolation,
            "frames": 1,
            "note": "black ink on white paper",
        }
        plain = (await client.get("/adapters/plain")).json()
        assert plain["description"] == "" and plain["input"]["note"] == ""
        listed = {a["task"]: a for a in (await client.get("/adapters")).json()["adapters"]}
        assert listed["ink"]["input"]["note"] == "black ink on white paper"
