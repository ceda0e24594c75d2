"""Client for the AdaptFormer Serve HTTP API: one frozen ViT, many adapters. Needs httpx and pydantic, not torch.

>>> from adaptformer_client import Client
>>> Client("http://127.0.0.1:8000").predict("digits", "seven.png", top_k=3).top
"""

from adaptformer_client._version import __version__ as __version__
from adaptformer_client.client import DEFAULT_URL, AsyncClient, Client
from adaptformer_client.errors import (
    AdaptformerClientError,
    APIConnectionError,
    APITimeoutError,
    AuthError,
    ConflictError,
    IncompatibleAdapterError,
    InvalidAdapterError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ServerError,
    UnsupportedMediaTypeError,
    parse_error,
)
from adaptformer_client.jobs import AsyncJob, Job, JobFailedError
from adaptformer_client.types import (
    AdapterInfo,
    DeleteResult,
    Health,
    InputInfo,
    JobInfo,
    MultiPredictResponse,
    Prediction,
    PredictResponse,
    Ready,
    RollbackResult,
    SplitInfo,
    UploadResult,
    VersionInfo,
    VersionList,
)

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APITimeoutError",
    "AdapterInfo",
    "AdaptformerClientError",
    "AsyncClient",
    "AsyncJob",
    "AuthError",
    "Client",
    "ConflictError",
    "DeleteResult",
    "Health",
    "IncompatibleAdapterError",
    "InputInfo",
    "InvalidAdapterError",
    "InvalidInputError",
    "Job",
    "JobFailedError",
    "JobInfo",
    "MultiPredictResponse",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PredictResponse",
    "Prediction",
    "Ready",
    "RollbackResult",
    "ServerError",
    "SplitInfo",
    "UnsupportedMediaTypeError",
    "UploadResult",
    "VersionInfo",
    "VersionList",
    "parse_error",
]
