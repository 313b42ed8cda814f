"""A GCS JSON-API server on loopback for the tests: gcp-storage-emulator, plus object generations.

Orbax writes checkpoints on GCS through tensorstore (OCDBT), which relies on two parts of
the protocol that gcp-storage-emulator leaves out: the ``x-goog-generation`` header on
object reads, and the ``ifGenerationMatch`` / ``ifGenerationNotMatch`` preconditions
(``ifGenerationMatch=0``: only if the object does not exist). :func:`start` wraps every
route of the emulator with both, so the real clients (tensorstore, gcsfs through
``etils.epath``, google-cloud-storage) run unchanged against it.

Not reproduced (so not tested here): authentication and IAM, retries on 429/503,
resumable-upload edge cases, object versioning and soft delete semantics beyond the
emulator's own, strong consistency under concurrent writers from many hosts.
"""

from __future__ import annotations

import functools
from http import HTTPStatus

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from train_support import free_port


def _object_name(request) -> tuple[str | None, str | None]:
    params = request.params or {}
    bucket, name = params.get("bucket_name"), params.get("object_id")
    if name is None and "name" in request.query:  # uploads name the object in the query
        name = request.query["name"][0]
    return bucket, name


def _generation(storage, bucket: str, name: str) -> str | None:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return None


def _with_generations(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        bucket, name = _object_name(request)
        if bucket is None or name is None:
            return handler(request, response, storage, *args, **kwargs)
        current = _generation(storage, bucket, name)
        match = request.query.get("ifGenerationMatch", [None])[0]
        not_match = request.query.get("ifGenerationNotMatch", [None])[0]
        if match is not None and match != (current or "0"):
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        if not_match is not None and current == not_match:
            response.status = HTTPStatus.NOT_MODIFIED if request.method == "GET" else HTTPStatus.PRECONDITION_FAILED
            return None
        result = handler(request, response, storage, *args, **kwargs)
        if request.method == "GET" and current is not None and response.status == HTTPStatus.OK:
            response["x-goog-generation"] = current
        return result

    return wrapped


def _patched_routes(routes):
    return tuple((regex, {method: _with_generations(h) for method, h in handlers.items()}) for regex, handlers in routes)


def start(bucket: str) -> tuple[emulator_server.Server, str]:
    """Starts an in-memory server with ``bucket``; returns ``(server, "http://127.0.0.1:PORT")``."""
    if not getattr(emulator_server, "_vheat_generations", False):
        emulator_server.HANDLERS = _patched_routes(emulator_server.HANDLERS)
        emulator_server._vheat_generations = True
    port = free_port()
    server = emulator_server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def client_env(url: str) -> dict[str, str]:
    """Environment that points tensorstore, gcsfs, google-cloud-storage and array_record at the server."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # google-cloud-cpp, inside array_record (TFDS data on gs://)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "NO_GCE_CHECK": "true",
    }
