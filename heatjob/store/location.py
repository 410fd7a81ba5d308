"""Where a store lives: a local path or any fsspec URL (s3://bucket/key, gs://, file://, ...).

Storage options (credentials, endpoint) come from the spec's `[store]
storage_options` or, where those are empty, from the environment as fsspec and
the storage's own client read it (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws; any option as FSSPEC_S3_<NAME>).
Only the driver lists or deletes; workers open the store through zarr alone.
"""

from __future__ import annotations

import re
from typing import Any

import fsspec
import zarr

from heatjob.errors import HeatjobError

# names of storage options whose values never go into a store's provenance
_SECRET = re.compile(r"key|secret|token|password|credential|session", re.IGNORECASE)
REDACTED = "<redacted>"


def is_url(path: str) -> bool:
    return "://" in path


def url_options(path: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The fsspec options for a URL; {} for a plain path."""
    if not is_url(path):
        return {}
    options = dict(storage_options or {})
    if path.startswith(("file://", "local://")):
        options.setdefault("auto_mkdir", True)  # zarr writes keys into folders not yet made
    if path.startswith(("s3://", "s3a://")):
        # s3fs's default (10) sends a HEAD before every whole-object GET to decide whether
        # to split it into ranges: a second request per chunk, for objects that are small
        # (records) or already one per request (shards)
        options.setdefault("max_concurrency", 1)
    return options


def zarr_options(path: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for zarr.open_group: storage options only where zarr takes them."""
    return {"storage_options": url_options(path, storage_options)} if is_url(path) else {}


def open_group(path: str, mode: str, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """A Zarr v3 group at a local path or URL."""
    return zarr.open_group(path, mode=mode, zarr_format=3, **zarr_options(path, storage_options))


def redact(options: Any) -> Any:
    """Storage options with secret values replaced, for the store's provenance."""
    if isinstance(options, dict):
        return {
            k: REDACTED if _SECRET.search(k) and not isinstance(v, dict) else redact(v)
            for k, v in options.items()
        }
    return options


class Location:
    """The driver's view of a store location: exists, what it holds, delete."""

    def __init__(self, path: str, storage_options: dict[str, Any] | None = None):
        self.path = path
        self.storage_options = url_options(path, storage_options)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(path, **self.storage_options)
        except (ImportError, ValueError) as exc:  # unknown protocol, its package missing
            raise HeatjobError(f"store path {path}: {exc}") from None
        self.root = self.root.rstrip("/")

    def _call(self, what: str, fn, *args, **kwargs):
        self.fs.invalidate_cache()  # listings change under us (workers, other runs)
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # network, credentials, permissions: one line for the user
            raise HeatjobError(f"store {self.path}: cannot {what}: {_one_line(exc)}") from None

    def is_file(self) -> bool:
        return bool(self._call("check it", self.fs.isfile, self.root))

    def names(self) -> set[str]:
        """Names directly under the location; empty if nothing is there."""
        try:
            entries = self._call("list it", self.fs.ls, self.root, detail=False)
        except FileNotFoundError:
            return set()
        return {e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""}

    def delete(self) -> None:
        if self.names():
            self._call("delete it", self.fs.rm, self.root, recursive=True)

    def check_container(self) -> None:
        """For a URL, that its bucket (or container) exists: a clear error before any work."""
        if not is_url(self.path):
            return
        bucket = self.root.split("/", 1)[0]
        try:  # ls, not exists: exists hides missing credentials as "no such bucket"
            self._call("reach it", self.fs.ls, bucket, detail=False)
        except FileNotFoundError:
            raise HeatjobError(f"store {self.path}: bucket {bucket!r} does not exist") from None


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
