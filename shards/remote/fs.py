"""An fsspec filesystem for a shard set's URL, and every way reaching it can fail as one line.

Credentials and endpoints come the standard way: for S3 botocore's chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles), for GCS gcsfs's
(``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's login, the metadata server), and for both the storage options
given with ``--storage-option KEY=VALUE`` or a mixture YAML's ``storage_options:``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json

from shards.base.errors import ShardError
from shards.format.manifest import MANIFEST_NAME, Manifest
from shards.remote.url import SCHEMES, child, redact, scheme_of

_FIX = {
    "s3": {
        "credentials": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or --storage-option "
        "key=… --storage-option secret=…; a public bucket: --storage-option anon=true",
        "endpoint": "check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=http://HOST:PORT) and that "
        "the server runs",
    },
    "gs": {
        "credentials": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key, run `gcloud auth "
        "application-default login`, or --storage-option token=anon for a public bucket",
        "endpoint": "check the network and --storage-option endpoint_url=… if you gave one",
    },
    "http": {
        "credentials": "give the server's credentials, e.g. --storage-option client_kwargs.headers.Authorization=…",
        "endpoint": "check the host and port and that the server runs",
    },
}


def fixes(url: str) -> dict:
    name = scheme_of(url).name
    return _FIX["http" if name.startswith("http") else name]


def filesystem(url: str, storage_options: dict | None = None, option: str = ""):
    """The fsspec filesystem for ``url`` (a fresh instance: the environment and options of this call count).
    An unknown scheme or one whose extra is not installed is one line naming the supported schemes or the
    ``pip install`` that adds it."""
    scheme = scheme_of(url, option)
    if importlib.util.find_spec(scheme.package) is None:
        raise ShardError(
            f"{option + ' ' if option else ''}{redact(url)}: reading {scheme.name}:// URLs needs {scheme.package}, "
            f"which is not installed; install it with `pip install -e '.[{scheme.extra}]'` (or `pip install "
            f"{scheme.package}`)"
        )
    import fsspec

    options = dict(storage_options or {})
    try:
        return fsspec.filesystem(scheme.protocol, skip_instance_cache=True, **options)
    except (TypeError, ValueError) as e:
        raise ShardError(
            f"{redact(url)}: the storage options {sorted(options)} do not suit {scheme.name}:// ({e}); check "
            "each --storage-option KEY=VALUE against the filesystem's documentation"
        ) from None


@contextlib.contextmanager
def remote_errors(url: str, what: str = ""):
    """Turn the failures of reading ``url`` into one line naming it and the fix (a ShardError)."""
    try:
        yield
    except ShardError:
        raise
    except Exception as e:  # every library raises its own kinds; see explain()
        message = explain(url, e, what)
        if message is None:
            raise
        raise ShardError(message) from None


def explain(url: str, e: BaseException, what: str = "") -> str | None:
    """One line for an exception raised while reading ``url``, or None when it is not about reaching it."""
    fix = fixes(url)
    shown = redact(url)
    name = type(e).__name__
    text = str(e).splitlines()[0] if str(e) else name
    status = getattr(e, "status", None) or getattr(e, "code", None)
    if isinstance(e, FileNotFoundError) or status == 404:
        return f"{shown}: not found (404{', ' + what if what else ''}); check the URL and the bucket"
    if isinstance(e, PermissionError) or status in (401, 403) or name in ("AccessDenied", "Forbidden"):
        return f"{shown}: access denied ({status or 403}: {text}); {fix['credentials']}"
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"):
        return f"{shown}: no credentials found ({text}); {fix['credentials']}"
    if name in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
        return f"{shown}: the credentials were refused ({name}); {fix['credentials']}"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError") or (
        isinstance(e, (ConnectionError, TimeoutError))
        or name.startswith("ClientConnector")
        or name in ("ServerDisconnectedError", "ClientOSError", "InvalidURL", "ClientPayloadError")
    ):
        return f"{shown}: cannot reach the server ({text}); {fix['endpoint']}"
    if isinstance(e, OSError) and e.errno is None and status is None:
        return f"{shown}: {what + ': ' if what else ''}{text}; {fix['endpoint']}"
    if isinstance(e, OSError):
        return f"{shown}: {what + ': ' if what else ''}{text} ({name}); check the URL, the credentials and the endpoint"
    if name in ("ClientError", "ClientResponseError", "HTTPError", "BotoCoreError", "ParamValidationError"):
        return f"{shown}: {text}; check the URL, the credentials and the endpoint"
    return None


def read_manifest(url: str, storage_options: dict | None = None, option: str = "", fs=None) -> tuple[Manifest, bytes]:
    """The manifest at ``url/manifest.json`` (checked field by field) and its bytes, read remotely (through
    ``fs`` when given, else a filesystem of its own)."""
    fs = fs or filesystem(url, storage_options, option)
    where = child(url, MANIFEST_NAME)
    try:
        with remote_errors(where, "no manifest there"):
            data = fs.cat_file(where)
    except ShardError as e:
        if "not found (404" in str(e):
            raise ShardError(
                f"{redact(url)}: no {MANIFEST_NAME} there (404); give the URL of a set uploaded with `python -m "
                f"shards pack SRC --out {redact(url)}` (a set is complete only once its manifest is there)"
            ) from None
        raise
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ShardError(f"{redact(where)}: unreadable manifest ({e}); re-upload the set with `shards pack`") from None
    return Manifest.from_dict(doc, where=redact(where)), data


__all__ = ["SCHEMES", "explain", "filesystem", "read_manifest", "remote_errors"]
