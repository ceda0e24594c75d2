"""The training worker: ``python -m adaptformer_server.jobs.worker JOB_DIR``, one process per job.

It reads ``JOB_DIR/params.json``, lowers its own priority, caps torch's threads before torch is imported, loads the
backbone the server runs (the same name and weights file, or the server's pickled prebuilt module), reads
``JOB_DIR/examples`` with the library's folder reader (the one that checked them), trains with ``adaptformer.train``
the recipe of the job's knobs (:meth:`TrainKnobs.train_config`) and writes ``JOB_DIR/adapter.safetensors`` with the
description the server checked at submission. Progress goes to stdout
as ``@job {json}`` lines (anything else a library prints there is logged); logs go to stderr. When the server
that started it is gone (its pipe breaks, or the parent process changes) it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

PREFIX = "@job "


def _emit(kind: str, **data: object) -> None:
    sys.stdout.write(PREFIX + json.dumps({"type": kind, **data}) + "\n")
    sys.stdout.flush()


def _limit_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def main(job_dir: Path) -> int:
    params = json.loads((job_dir / "params.json").read_text())
    _limit_threads(int(params["threads"]))
    parent = os.getppid()
    with contextlib.suppress(OSError):
        os.nice(int(params.get("nice", 0)))

    import torch

    torch.set_num_threads(int(params["threads"]))
    torch.set_num_interop_threads(1)

    from adaptformer.backbone import Backbone, load_backbone
    from adaptformer.data.folders import load_folder_splits
    from adaptformer.preprocess import spec_from_model
    from adaptformer.train import build_model, fit, save_result
    from adaptformer_server.jobs.knobs import TrainKnobs

    knobs = TrainKnobs.model_validate(params["knobs"])
    cfg = knobs.train_config(params["device"])

    started = time.monotonic()
    source = params["backbone"]
    if source.get("pickle"):
        model = torch.load(source["pickle"], map_location="cpu", weights_only=False)
        backbone = Backbone(model.eval(), source["name"], spec_from_model(model))
    else:
        backbone = load_backbone(source["name"], source.get("weights"))
    splits = load_folder_splits(
        job_dir / "examples",
        backbone.spec,
        frames=knobs.frames,
        val_fraction=knobs.val_fraction,
        seed=knobs.seed,
        limit=None,
        progress=False,
    )
    # The adapter's metrics name its data; the server's folder is not the callers' business (predict keys read them).
    splits.source = f"the examples of training job {job_dir.name}"
    _emit(
        "loaded",
        train=len(splits.train.y),
        val=len(splits.val.y),
        labels=splits.labels,
        modality=splits.modality,
        frames=splits.frames,
        seconds=round(time.monotonic() - started, 3),
    )
    model = build_model(backbone, cfg, len(splits.labels), frames=splits.frames)
    fit_started = time.monotonic()

    def on_epoch(record: dict) -> None:
        if os.getppid() != parent:  # the server is gone: nobody will register the result
            raise SystemExit(3)
        _emit("epoch", **record, seconds=round(time.monotonic() - fit_started, 3))

    result = fit(model, splits, cfg, progress=False, on_epoch=on_epoch)
    out = job_dir / "adapter.safetensors"
    summary = save_result(
        result,
        out,
        params["task"],
        splits,
        backbone,
        extra={"job": params["job"]},
        description=params["description"],
        input_note="",
    )
    _emit("done", metrics=summary["metrics"], seconds=round(time.monotonic() - started, 3))
    return 0


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    try:
        sys.exit(main(directory))
    except BrokenPipeError:  # the server closed its end: it stopped or died
        sys.exit(3)
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exc()
        with contextlib.suppress(Exception):
            _emit("error", message=f"{type(e).__name__}: {e}"[:2000])
        sys.exit(1)
