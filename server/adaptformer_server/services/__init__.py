"""The service layer: what routes call. The adapter manager owns the adapters (store, registry, bank, watcher);
the inference service admits, decodes and runs requests. The runtime builds both and runs their life cycle."""

from adaptformer_server.services.adapters import AdapterManager, Replacement
from adaptformer_server.services.inference import (
    ALL_IMAGE_TASKS,
    Admission,
    InferenceResult,
    InferenceService,
    Payload,
    check_task_name,
)

__all__ = [
    "ALL_IMAGE_TASKS",
    "AdapterManager",
    "Admission",
    "InferenceResult",
    "InferenceService",
    "Payload",
    "Replacement",
    "check_task_name",
]
