"""Training jobs: new tasks trained by the server from labelled examples (``POST /tasks/{task}/train``)."""

from adaptformer_server.jobs.examples import ExamplesSummary, check_examples, unpack_fields, unpack_zip
from adaptformer_server.jobs.manager import TERMINAL, JobManager, QueueFull, TrainParams, register_adapter

__all__ = [
    "TERMINAL",
    "ExamplesSummary",
    "JobManager",
    "QueueFull",
    "TrainParams",
    "check_examples",
    "register_adapter",
    "unpack_fields",
    "unpack_zip",
]
