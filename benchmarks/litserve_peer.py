"""The peer of benchmarks/peer_load.py: the project's own engine and adapters behind LitServe.

    PEER_WEIGHTS=backbone.safetensors PEER_STORE=store/ python benchmarks/litserve_peer.py --port 8300

One API process, one inference worker, max batch 32, batch timeout 5 ms: LitServe's own batching in front of the
same ``MultiTaskViT``, the same adapter files and the same preprocessing (``preprocess_image``) as the server.
Requests are multipart forms with an ``image`` file and a ``task`` field; the answer is the top-5 labels. Needs
the ``peer`` extra (``pip install '.[peer]'``): a benchmark's, not the product's.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from PIL import Image

from adaptformer.adapter_file import task_from_bytes
from adaptformer.preprocess import preprocess_image
from adaptformer.task import TaskAdapter
from adaptformer_server.backbone import build_engine
from adaptformer_server.settings import Settings


class PeerAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        torch.set_num_threads(int(os.environ.get("PEER_THREADS", "1")))
        backbone = os.environ.get("PEER_BACKBONE", "embedded")
        settings = Settings(backbone=backbone, weights=Path(os.environ["PEER_WEIGHTS"]), device="cpu", threads=1)
        self.engine, self.info = build_engine(settings)
        self.tasks: dict[str, TaskAdapter] = {}
        for path in sorted(Path(os.environ["PEER_STORE"]).glob("*.safetensors")):
            task = task_from_bytes(path.read_bytes(), source=path.name)
            self.tasks[path.stem] = self.engine.prepare(task, self.info)

    def decode_request(self, request) -> tuple[str, torch.Tensor]:  # type: ignore[no-untyped-def]  # LitServe reads a form for an unannotated request
        task = str(request["task"])
        data = request["image"].file.read()
        return task, preprocess_image(Image.open(io.BytesIO(data)), self.tasks[task].info.input)

    def batch(self, inputs: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        return inputs

    def predict(self, batch: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
        keys = [task for task, _ in batch]
        with torch.inference_mode():
            out = self.engine(torch.stack([x for _, x in batch]), keys, table=self.tasks)
        return [o.float() for o in out]

    def unbatch(self, output: list[torch.Tensor]) -> list[torch.Tensor]:
        return output

    def encode_response(self, logits: torch.Tensor) -> dict[str, Any]:
        scores, idx = torch.softmax(logits, -1).topk(min(5, logits.numel()))
        return {"predictions": [{"index": int(i), "score": float(s)} for s, i in zip(scores, idx, strict=True)]}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8300)
    args = p.parse_args()
    api = PeerAPI(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")
