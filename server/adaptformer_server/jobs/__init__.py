"""Training jobs: new tasks trained by the server from labelled examples (``POST /tasks/{task}/train``)."""

from adaptformer_server.jobs.examples import ExamplesSummary, check_examples, unpack_fields, unpack_zip
from adaptformer_server.jobs.knobs import TrainKnobs
from adaptformer_server.jobs.manager import JobManager, QueueFull, register_adapter
from adaptformer_server.jobs.record import TERMINAL, TRANSITIONS, JobRecord

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "ExamplesSummary",
    "JobManager",
    "JobRecord",
    "QueueFull",
    "TrainKnobs",
    "check_examples",
    "register_adapter",
    "unpack_fields",
    "unpack_zip",
]
