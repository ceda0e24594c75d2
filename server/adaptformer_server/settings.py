"""Server settings: pydantic-settings, read from ADAPTFORMER_* environment variables and CLI flags."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["MAKE_KEY", "MIN_KEY_LENGTH", "PLACEHOLDER_KEYS", "InsecureKeyError", "Settings", "default_store"]

MiB = 1024 * 1024

MIN_KEY_LENGTH = 16
MAKE_KEY = 'python3 -c "import secrets; print(secrets.token_urlsafe(24))"'
# Key values seen in documents and examples, this project's and common ones (docs/API.md, "Key rules"). Compared
# after _normalized_key, so `Change_Me`, `change-me` and `<change me>` are all `changeme`.
PLACEHOLDER_KEYS = frozenset(
    {
        "changeme",
        "changemeadminkey",
        "changemeapikey",
        "changemepredictkey",
        "changethis",
        "replaceme",
        "secret",
        "s3cr3t",
        "secretkey",
        "mysecretkey",
        "yoursecretkey",
        "password",
        "adminkey",
        "adminsecret",
        "apikey",
        "predictkey",
        "yourkey",
        "youradminkey",
        "yourapikey",
        "16+randomcharacters",
    }
)


def default_store() -> Path:
    """``$XDG_DATA_HOME/adaptformer/adapters``, or ``~/.local/share/adaptformer/adapters``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "adaptformer" / "adapters"


def _host_name(value: str) -> str:
    """A host name as the Host check compares it: lower case, no trailing dot, IPv6 without brackets."""
    return value.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _origin(value: str) -> str:
    """A CORS origin as browsers send it: ``scheme://host[:port]``, lower case, without a path or final slash."""
    value = value.strip().rstrip("/").lower()
    if value == "*":
        raise ValueError(
            "cors_origins: '*' would let every web page call this server (and manage the adapters of a keyless "
            "loopback server); list the origins, e.g. https://app.example.com"
        )
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.path or parts.query:
        raise ValueError(
            f"cors_origins: {value!r} is not an origin scheme://host[:port] (e.g. https://app.example.com)"
        )
    return value


def _normalized_key(key: str) -> str:
    return re.sub(r"[\s\-_.<>'\"]", "", key.lower())


def _is_placeholder(key: str) -> bool:
    normalized = _normalized_key(key)
    return normalized in PLACEHOLDER_KEYS or len(set(key)) == 1  # "xxxxxxxxxxxxxxxx", "0000000000000000"


class InsecureKeyError(ValueError):
    """A key too weak for a server that other machines can reach (see :meth:`Settings.check_keys`)."""


class Settings(BaseSettings):
    """Everything the server can be told; each field is also a CLI flag (``max_batch_size`` -> ``--max-batch-size``)."""

    model_config = SettingsConfigDict(env_prefix="ADAPTFORMER_", extra="ignore", validate_default=True)

    host: str = Field("127.0.0.1", description="interface to bind; admin routes need an admin key off loopback")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    backbone: str = Field("embedded", description="'embedded' (shipped 28x28 ViT) or any timm ViT name")
    weights: Path | None = Field(
        None,
        description="backbone weights: a file (safetensors or torch state dict), or for videomae-* also a Hugging "
        "Face model folder; a timm name without weights: downloaded",
    )
    store: Path = Field(default_factory=default_store, description="adapter directory (<task>.safetensors files)")
    seed_demo: bool = Field(True, description="copy the shipped demo adapters into an unseeded store (embedded only)")
    store_poll_ms: float = Field(
        500.0,
        ge=0,
        le=3_600_000,
        description="how often to look for adapters added, replaced or deleted by other servers sharing the store "
        "(0: never)",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="backbone dtype; auto: float16 on CUDA, float32 on CPU"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads for inference (default: torch's choice)")
    max_batch_size: int = Field(32, ge=1, le=4096, description="most samples in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=60_000, description="longest a sample waits for a batch to fill")
    queue_size: int = Field(1024, ge=1, description="samples waiting at most; beyond it requests get 503")
    slots: int = Field(32, ge=1, description="adapters resident on the device; the rest are paged in on demand")
    max_body_bytes: int = Field(32 * MiB, ge=1, description="largest /predict request body")
    max_image_pixels: int = Field(25_000_000, ge=1, description="largest image (or clip frame) in pixels")
    max_request_pixels: int = Field(100_000_000, ge=1, description="pixels of all images/frames of one request")
    max_images_per_request: int = Field(64, ge=1, description="most images in one /predict request")
    max_frames: int = Field(64, ge=1, description="most frames in one clip")
    max_upload_bytes: int = Field(128 * MiB, ge=1, description="largest adapter file accepted by POST /adapters")
    max_parts: int = Field(128, ge=1, description="most multipart parts (files and fields) in one request")
    keep_versions: int = Field(
        3, ge=1, le=1000, description="versions kept per task, the current one included (pinning and rollback)"
    )
    adapter_sources: Annotated[list[Literal["https", "http", "file", "hf", "s3"]], NoDecode] = Field(
        [],
        description="comma-separated schemes POST /adapters may fetch an adapter from by reference (https, http, "
        "file, hf, s3); default: none",
    )
    allow_private_sources: bool = Field(
        False,
        description="let http(s) sources and their redirects reach loopback, link-local, private and other "
        "non-public addresses (default: refused)",
    )
    adapter_source_dirs: Annotated[list[Path], NoDecode] = Field(
        [],
        description="comma-separated directories file:// sources must lie in (with 'file' in --adapter-sources)",
    )
    source_timeout: float = Field(
        60.0, gt=0, le=3600, description="seconds a remote adapter source has to deliver the whole file"
    )
    fast_decode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="decode JPEG and PNG stills with torchvision and resize them as tensor ops (within 4/255 of "
        "PIL); auto: where they decode on a GPU (on a CPU, PIL is as fast and equals training exactly)",
    )
    device_decode: bool = Field(
        True, description="on a CUDA server, decode JPEGs on the GPU (nvJPEG) and resize them there"
    )
    decode_threads: int | None = Field(
        None, ge=1, le=256, description="threads that decode request images (default: CPUs, at most 8)"
    )
    inline_decode_pixels: int = Field(
        16384,
        ge=0,
        description="requests with at most this many image pixels in all decode on the event loop (a hand-off to "
        "a thread costs more than decoding a thumbnail)",
    )
    header_timeout: float = Field(
        15.0, gt=0, le=3600, description="seconds a connection has to send a request's headers; then it is closed"
    )
    body_timeout: float = Field(
        30.0, gt=0, le=3600, description="longest wait in seconds for the next piece of a request body (then 408)"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated names the Host header may carry ('*': any, '*.example.com': subdomains); "
        "default: localhost, 127.0.0.1, ::1 and --host (any when --host is 0.0.0.0 or ::)",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated keys for /predict and GET /adapters (none: open)"
    )
    admin_key: SecretStr | None = Field(None, description="key for POST/DELETE /adapters")
    replica_id: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="name of this server in the X-AdaptFormer-Replica response header (default: host name:pid)",
    )
    jobs_dir: Path | None = Field(
        None,
        description="where training jobs keep their records, logs and examples (default: <store>-jobs beside the "
        "store; give each server process its own)",
    )
    train_queue: int = Field(4, ge=1, le=1000, description="training jobs waiting at most; beyond it 429")
    train_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="torch CPU threads of the training worker (default: 1 up to 4 cores, else a quarter of them)",
    )
    train_nice: int = Field(10, ge=0, le=19, description="niceness of the training worker process (lower priority)")
    train_timeout: float = Field(3600.0, gt=0, description="seconds a training job may run before it is stopped")
    train_max_epochs: int = Field(200, ge=1, le=100_000, description="most epochs a training job may ask for")
    keep_jobs: int = Field(200, ge=1, description="finished training jobs whose records and files are kept")
    max_examples_bytes: int = Field(
        256 * MiB, ge=1, description="largest POST /tasks/{task}/train body (the examples zip or fields)"
    )
    max_examples: int = Field(10_000, ge=2, description="most images or clips in one training job")
    max_example_files: int = Field(50_000, ge=1, description="most members of an examples zip (clip frames count)")
    max_examples_unzipped: int = Field(
        2048 * MiB, ge=1, description="most bytes an examples zip may unpack to, all members together"
    )
    max_zip_ratio: float = Field(
        100.0,
        gt=1,
        description="highest compression ratio of an examples zip, in all and of any member over 1 MiB (zip bombs)",
    )
    max_examples_pixels: int = Field(
        2_000_000_000, ge=1, description="pixels of all images and frames of one training job"
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="front processes (HTTP, auth, limits, decoding) sharing the port; from 2 on, the model runs in "
        "one engine process of its own that batches the requests of every front; 'auto': one per CPU core left "
        "after the engine's (at most 16) on a CUDA device, 1 (one process) on a CPU-only host",
    )
    engine_process: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run the model in an engine process of its own ('auto': when there are 2 or more workers; 'on' "
        "also with one front process)",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text or as JSON objects (one per line); both carry the request id"
    )
    tracing: bool = Field(
        False,
        description="export OpenTelemetry traces (the otel extra): spans per request and per batch, sent where the "
        "OTEL_* variables say (OTLP over HTTP to OTEL_EXPORTER_OTLP_ENDPOINT by default)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated web origins (https://app.example.com) whose pages may call this server from "
        "a browser (CORS)",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("adapter_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            return [
                v.strip().lower() if isinstance(v, str) else v for v in value if not isinstance(v, str) or v.strip()
            ]
        return value

    @field_validator("adapter_source_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(v.strip()).expanduser() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return _split_list(value, _host_name)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return _split_list(value, _origin)

    @field_validator("admin_key", mode="before")
    @classmethod
    def _strip_key(cls, value: object) -> object:
        """A key read from a file (``$(cat keyfile)``) ends with a newline no client sends: stripped, as API keys are;
        an empty one is no key."""
        return (value.strip() or None) if isinstance(value, str) else value

    @field_validator("store", "weights", "jobs_dir")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            count = int(str(value).strip())
        except ValueError:
            raise ValueError(f"workers must be a number from 1 to 64 or 'auto', got {value!r}") from None
        if not 1 <= count <= 64:
            raise ValueError(f"workers must be from 1 to 64 (or 'auto'), got {count}")
        return count

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def key_problems(self) -> list[str]:
        """What is wrong with each configured key: shorter than 16 characters or a placeholder (never the key)."""
        named = [("ADAPTFORMER_ADMIN_KEY", self.admin_key)] if self.admin_key is not None else []
        named += [(f"ADAPTFORMER_API_KEYS key {i} of {len(self.api_keys)}", k) for i, k in enumerate(self.api_keys, 1)]
        problems = []
        for name, secret in named:
            key = secret.get_secret_value()
            if len(key) < MIN_KEY_LENGTH:
                problems.append(f"{name} has {len(key)} characters, fewer than {MIN_KEY_LENGTH}")
            elif _is_placeholder(key):
                problems.append(f"{name} is a placeholder from an example")
        return problems

    def check_keys(self) -> list[str]:
        """Raises :class:`InsecureKeyError` for weak keys on a server bound off loopback; on loopback, where only
        this machine connects, returns the problems for a warning.
        """
        problems = self.key_problems()
        if problems and not self.loopback:
            raise InsecureKeyError(
                f"refusing to serve on {self.host}, an address other machines can reach, with a weak key: "
                f"{'; '.join(problems)}. Make a random key of at least {MIN_KEY_LENGTH} characters with "
                f"`{MAKE_KEY}` and set it in the environment"
            )
        return problems

    @property
    def loopback(self) -> bool:
        """Whether the server binds to a loopback interface only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def _split_list(value: object, clean: Callable[[str], str]) -> object:
    """A comma-separated string or a list, its non-empty string items cleaned (other items left to validation)."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list):
        return [clean(v) if isinstance(v, str) else v for v in value if not isinstance(v, str) or v.strip()]
    return value
