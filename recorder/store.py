"""Object stores for sealed segments and summaries: a local directory, or S3.

Both keep the same contract, so the spool and the catalog never care which one
they talk to: keys are `/`-separated relative paths, `put` returns only once
the object is stored and read back identical (returning the object's version
as a listing reports it: S3's ETag, a file's `mtime_ns:size:inode`), `list`
yields keys in lexicographic order like S3's ListObjectsV2.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

_TEMP_PREFIX = ".tmp-"
_SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
SCHEMES_HELP = "use file:///abs/dir, file:relative/dir or s3://bucket/optional/prefix"


class StoreError(RuntimeError):
    """The store could not do what was asked (unreachable, refused, inconsistent)."""


class KeyNotFound(LookupError):
    """No object under that key."""


class IntegrityError(StoreError):
    """The store handed back different bytes from those just written."""


@runtime_checkable
class Store(Protocol):
    def put(self, key: str, data: bytes) -> str | None:
        """Store and verify; the object's version as a listing reports it (None: unknown)."""
        ...

    def put_new(self, key: str, data: bytes) -> bool:
        """Store and verify only if no object is under `key`; False (nothing written) if one is.

        Atomic: of writers racing for one key, exactly one gets True.
        """
        ...

    def get(self, key: str) -> bytes: ...

    def list(self, prefix: str) -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape a directory or collide with temp files."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key[:80]!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or part.startswith(_TEMP_PREFIX):
            raise ValueError(f"invalid object key {key[:80]!r}")
    return key


class LocalStore:
    """A directory as an object store: atomic, durable writes (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes) -> str | None:
        path = self._path(key)
        _make_dirs_durable(path.parent, self.root)
        temp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {key}: {exc.strerror}") from None
        fsync_dir(path.parent)
        if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
            raise IntegrityError(f"{key} reads back different from what was written")
        return file_version(path)

    def put_new(self, key: str, data: bytes) -> bool:
        """The object is written whole to a temp file, then linked in: `link` fails if it exists."""
        path = self._path(key)
        _make_dirs_durable(path.parent, self.root)
        temp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot write {key}: {exc.strerror}") from None
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)
        if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
            raise IntegrityError(f"{key} reads back different from what was written")
        return True

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(key) from None
        except OSError as exc:
            raise StoreError(f"cannot read {key}: {exc.strerror}") from None

    def list(self, prefix: str) -> Iterator[str]:
        directory, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*directory.split("/")) if directory else self.root
        if not base.is_dir():
            return
        keys = []
        for dirpath, _dirnames, filenames in os.walk(base):
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TEMP_PREFIX):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {key}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def quiet_sdk_debug_logs() -> None:
    """Keep the AWS SDK's debug records from being made at all, unless its loggers were set.

    botocore writes some twenty-five debug records per call (events emitted,
    signing, each header), and an upload is four calls (PUT and read-back, for
    the segment and its summary). mitmproxy sets the root logger to DEBUG and
    hands every record to its event loop, where each one is formatted and
    dispatched to every addon: a segment's upload turned into a burst of
    about a hundred loop callbacks, delaying the statements in flight
    (issue 22). A logger an operator configured (its level not NOTSET) is left
    alone, and so is one that already drops debug records: raising its level to
    INFO would make it emit records it did not.
    """
    for name in _SDK_LOGGERS:
        sdk_logger = logging.getLogger(name)
        if sdk_logger.level == logging.NOTSET and sdk_logger.getEffectiveLevel() < logging.INFO:
            sdk_logger.setLevel(logging.INFO)


class S3Store:
    """An S3 bucket (or S3-compatible store) under an optional key prefix.

    Writes carry a SHA-256 checksum S3 verifies on receipt, and are then read
    back and compared here, because moto and some S3-compatible stores accept
    the checksum without checking it. botocore's standard retry mode retries
    throttling, 5xx and connection errors with exponential backoff, up to
    `max_attempts` attempts in all; whatever still fails surfaces as StoreError
    for the spool to retry later. `client` replaces the boto3 client built here.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                s3={"addressing_style": "path"} if endpoint_url else None,
            )
            quiet_sdk_debug_logs()
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        self.client = client

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> str | None:
        full_key = self._key(key)
        digest = hashlib.sha256(data).digest()
        with _s3_errors("write", key):
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=full_key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
        if hashlib.sha256(self.get(key)).digest() != digest:
            raise IntegrityError(f"s3://{self.bucket}/{full_key} reads back different")
        etag = answer.get("ETag")
        return str(etag) if etag else None

    def put_new(self, key: str, data: bytes) -> bool:
        """A conditional PutObject (`If-None-Match: *`): S3 answers 412, or 409 to a racing
        writer, when the key exists."""
        from botocore.exceptions import ClientError

        full_key = self._key(key)
        digest = hashlib.sha256(data).digest()
        with _s3_errors("write", key):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=full_key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=base64.b64encode(digest).decode(),
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                raise
        if hashlib.sha256(self.get(key)).digest() != digest:
            raise IntegrityError(f"s3://{self.bucket}/{full_key} reads back different")
        return True

    def get(self, key: str) -> bytes:
        full_key = self._key(key)
        with _s3_errors("read", key):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=full_key)
            except self.client.exceptions.NoSuchKey:
                raise KeyNotFound(key) from None
            return answer["Body"].read()

    def list(self, prefix: str) -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors("list", prefix or "/"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"][len(base) :]

    def delete(self, key: str) -> None:
        with _s3_errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with _s3_errors("check", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True


class _s3_errors:
    """Turn botocore failures into StoreError with a short, secret-free message."""

    def __init__(self, action: str, key: str) -> None:
        self.action = action
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any):
        if exc is None or isinstance(exc, KeyNotFound | StoreError):
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        elif isinstance(exc, BotoCoreError):
            detail = type(exc).__name__
        else:
            return False
        raise StoreError(f"S3 {self.action} of {self.key} failed ({detail})") from None


def open_store(url: str, *, s3_endpoint_url: str | None = None) -> Store:
    """The store a `hoopgw_store` URL names.

    `file:///abs/dir`, `file:/abs/dir`, `file:relative/dir` (from the working
    directory), or `s3://bucket/optional/prefix`.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"store URL has no bucket; {SCHEMES_HELP}")
        return S3Store(bucket, prefix, endpoint_url=s3_endpoint_url)
    if url.startswith("file:"):
        rest = url[len("file:") :]
        if rest.startswith("//"):
            host, slash, path = rest[2:].partition("/")
            if host not in ("", "localhost") or not slash:
                raise ValueError(f"file store URL must name a local path; {SCHEMES_HELP}")
            return LocalStore(Path("/" + path))
        if not rest:
            raise ValueError(f"file store URL has no directory; {SCHEMES_HELP}")
        return LocalStore(Path.cwd() / rest)
    scheme = url.partition(":")[0] if ":" in url else ""
    shown = f"scheme {scheme[:20]!r}" if scheme else "no scheme"
    raise ValueError(f"unsupported store URL ({shown}); {SCHEMES_HELP}")


def file_version(path: Path) -> str | None:
    """A local object's version: changes whenever the file is replaced (each put is a
    new inode) or rewritten; None when the file is gone."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}"


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (new, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durable(directory: Path, root: Path) -> None:
    """Create missing directories below `root`, fsyncing each parent that gained one."""
    if directory.is_dir():
        return
    missing = []
    current = directory
    while not current.is_dir() and current != root:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create directory {path}: {exc.strerror}") from None
        fsync_dir(path.parent)
