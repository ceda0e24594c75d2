"""hf:// sources: ``hf://OWNER/REPO/PATH/FILE.safetensors[@REVISION]`` through ``huggingface_hub`` (an optional
dependency; timm brings it). Its cache, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` apply as everywhere else it is used.
Online, the file's size is asked first, so that a file over the limit is refused before it is downloaded.

The reference is checked here, the repository id with the hub's own rules, before anything is asked; whatever the
hub client raises then (an error status, a hub that cannot be reached) is the remote's failure, a 502.
"""

from __future__ import annotations

from pathlib import Path

from adaptformer_server.errors import ApiError, ValidationFailed
from adaptformer_server.settings import Settings
from adaptformer_server.sources.errors import SourceUnavailable, too_large
from adaptformer_server.sources.redaction import cover_loggers, printable, redact, shown

__all__ = ["read"]

_FORM = "hub sources are hf://OWNER/REPO/PATH/FILE.safetensors[@REVISION]"


def _reference(source: str) -> tuple[str, str, str | None]:
    """``hf://owner/repo/dir/file.safetensors@rev`` -> (``owner/repo``, ``dir/file.safetensors``, ``rev``).

    Raises:
        ValidationFailed: not of that form (422).
    """
    rest, at, revision = source[len("hf://") :].rpartition("@")
    if not at:
        rest, revision = revision, ""
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts) or ".." in parts or (at and not revision):
        raise ValidationFailed(f"{shown(source)!r}: {_FORM}")
    return f"{parts[0]}/{parts[1]}", "/".join(parts[2:]), revision or None


def read(source: str, settings: Settings) -> bytes:
    """The bytes of an hf:// source.

    Raises:
        ValidationFailed: a malformed reference or repository id (422).
        PayloadTooLarge: a file over ``max_upload_bytes`` (413).
        SourceUnavailable: no such repository, revision or file, no access, or a hub that cannot be reached (502).
    """
    repo, filename, revision = _reference(source)
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise SourceUnavailable(
            "hf:// sources need huggingface_hub on the server: pip install huggingface_hub"
        ) from None
    cover_loggers()  # the loggers its import created
    named = printable(f"hf://{repo}/{filename}" + (f"@{revision}" if revision else ""))
    limit = settings.max_upload_bytes
    timeout = settings.source_timeout
    try:
        validate_repo_id(repo)
        if not constants.HF_HUB_OFFLINE:
            meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout)
            if meta.size is not None and meta.size > limit:
                raise too_large(meta.size, settings)
        path = Path(hf_hub_download(repo, filename, revision=revision, etag_timeout=timeout))
        size = path.stat().st_size
        if size > limit:
            raise too_large(size, settings)
        return path.read_bytes()
    except HFValidationError as e:
        raise ValidationFailed(f"{named!r}: {printable(str(e))} ({_FORM})"[:500]) from None
    except LocalEntryNotFoundError:
        raise SourceUnavailable(
            f"{named} is not in the hub cache{' and HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else ''}, "
            "or the hub cannot be reached"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise SourceUnavailable(f"{named}: {type(e).__name__} (no such repository, revision or file, or no access "
                                "with this server's HF_TOKEN)") from None  # fmt: skip
    except HfHubHTTPError as e:
        raise SourceUnavailable(f"cannot fetch {named}: {redact(str(e))}"[:500]) from None
    except ApiError:
        raise
    except OSError as e:
        raise SourceUnavailable(f"cannot fetch {named}: {type(e).__name__}: {redact(str(e))}"[:500]) from None
    except Exception as e:  # the hub client's own connection and protocol errors
        raise SourceUnavailable(
            f"cannot reach the hub ({redact(constants.ENDPOINT)}) for {named}: {type(e).__name__}: "
            f"{redact(str(e))} (with HF_HUB_OFFLINE=1 the server answers from its hub cache only)"[:500]
        ) from None
