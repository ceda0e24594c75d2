"""``adaptformer serve`` with a device stand-in: the forward pass of each batch replaced by a sleep.

    STAND_IN_MS=2 python benchmarks/stand_in_server.py --workers 2 --store /tmp/store ...

Only for benchmarks/front_tier.py. The sleep costs no CPU, as a GPU's forward pass costs the host none, so what
the server's processes spend is HTTP, decoding and batching alone. The patch is made at import, so the engine
process (started with multiprocessing's spawn, which imports this script again as ``__mp_main__``) runs it too.
The logits are zeros of each task's class count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import torch

from adaptformer.task import TaskAdapter
from adaptformer_server.services.inference import InferenceService

STAND_IN_S = float(os.environ.get("STAND_IN_MS", "2")) / 1000


def _sleep_batch(
    self: InferenceService, x: torch.Tensor, keys: Sequence[str], table: Mapping[str, TaskAdapter]
) -> list[torch.Tensor]:
    time.sleep(STAND_IN_S)
    return [torch.zeros(len(table[k].info.labels)) for k in keys]


InferenceService.run_batch = _sleep_batch  # type: ignore[method-assign]

if __name__ == "__main__":
    from adaptformer_server.cli import main

    main()
