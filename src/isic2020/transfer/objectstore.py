"""Object storage (S3, MinIO, Ceph, moto): the one module that imports boto3, and lazily.

What it is for: a lab publishes the verified files to its own bucket (``isic2020 mirror``) and
every node fetches from there (``fetch --mirror s3://bucket/prefix``) with the same checks as
over https. Invariants:

* **Reads go through the range engine unchanged.** A mirror ``s3://bucket/prefix`` becomes the
  plain URL folder of that prefix (``http(s)://endpoint/bucket/prefix/``, as boto3 addresses it).
  With credentials, every session the engine opens (``transfer.http.make_session``) carries a
  :class:`PresigningAdapter` mounted on that folder: each request is re-addressed to a presigned
  URL for its own method (a GET URL is no HEAD URL in SigV4) and query (``partNumber``), cached
  until near its expiry, and made anew once when the store answers 403 (an expired URL, a
  rotated session). Range, If-Match, resume, the ETag and sha256 checks are the engine's, as
  for any host. Without credentials the folder is used unsigned (AWS Open Data is public).
* **Credentials** come from boto3's standard chain (environment, profile, SSO, instance role);
  ``AWS_ENDPOINT_URL`` points it at MinIO or moto (path-style addressing then).
* **Uploads** of more than :data:`PART_SIZE` bytes are multipart in parts of exactly
  :data:`PART_SIZE`, so the bucket's ETag is ``md5(part md5s)-N`` with a part size the engine's
  multipart check can reproduce; smaller files are one PUT (ETag = MD5). A file is read from
  disk one part at a time (at most ``UPLOAD_THREADS + 1`` parts in memory). An upload that was
  cut off is resumed: parts already in the store whose MD5 matches the local part are kept.
* **Failures** are one line each: :class:`UsageError` (exit 2) for what the user must change
  (no boto3, a malformed URL, a missing bucket, credentials the store does not know, no
  permission, a prefix without the files), :class:`StoreUnavailable` (exit 3) for what a later
  run can overcome (an expired session, the endpoint unreachable).

API for other commands (shards writing to ``s3://``): ``ObjectStore.connect(url)``, then
``store.upload(name, path, metadata=...)``, ``store.stat(name) -> ObjectStat | None`` (with the
object's user metadata), ``store.listing()`` (every object under the prefix with its size and
ETag, one paged LIST), ``store.get(name)`` (a small object's bytes) and ``store.delete(name)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from requests.adapters import HTTPAdapter

from isic2020 import config
from isic2020.errors import DownloadError, UsageError
from isic2020.transfer import http
from isic2020.transfer.digests import MultipartHasher, normalize_etag

MiB = 1 << 20
#: The fixed part size of every multipart upload (S3's minimum is 5 MiB; 8 MiB is boto3's and
#: the AWS CLI's default, so a bucket filled by ``aws s3 cp`` has the same ETags).
PART_SIZE = 8 * MiB
UPLOAD_THREADS = 4
#: Presigned URLs live this long unless ``$ISIC2020_S3_PRESIGN_SECONDS`` says otherwise; they are
#: made anew a minute before they expire (and on any 403).
DEFAULT_PRESIGN_SECONDS = 3600.0
_PRESIGN_PARAMS = ("x-amz-", "awsaccesskeyid", "signature", "expires")
_USER_FIXES = {
    "NoSuchBucket": "check the bucket name in the s3:// URL, or create the bucket",
    "InvalidAccessKeyId": "the store does not know these credentials; check AWS_ACCESS_KEY_ID "
                          "or the profile (AWS_PROFILE)",
    "SignatureDoesNotMatch": "the secret key does not match the access key; check "
                             "AWS_SECRET_ACCESS_KEY or the profile",
    "AccessDenied": "these credentials may not read or write there; ask for s3:GetObject "
                    "(fetch) or s3:PutObject (mirror) on the prefix",
    "AllAccessDisabled": "access to the bucket is disabled",
    "InvalidBucketName": "check the bucket name in the s3:// URL",
}
_LATER_FIXES = {
    "ExpiredToken": "the AWS session has expired; renew it (e.g. `aws sso login`) and run "
                    "again: what finished is kept",
    "TokenRefreshRequired": "the AWS session must be renewed; renew it and run again",
    "RequestExpired": "the request expired (is the clock right?); run again",
}


class StoreUnavailable(DownloadError):
    """The object store cannot be used now, for a reason a later run can overcome (exit 3)."""


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/prefix``: ``prefix`` has no leading or trailing slash ("" = the root)."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class ObjectStat:
    """What the store says of one object: its size, ETag (quotes stripped) and, from a HEAD,
    its user metadata (``x-amz-meta-*``; a LIST does not give it)."""

    size: int
    etag: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


def is_s3_url(url: str) -> bool:
    return url.lower().startswith("s3://")


def parse_s3_url(url: str) -> S3Location:
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"{url!r} is not an s3://bucket/prefix URL",
                         "give it as s3://bucket or s3://bucket/some/prefix")
    prefix = parts.path.strip("/")
    if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
        raise UsageError(f"{url!r}: the prefix has an empty, '.' or '..' component",
                         "give a plain prefix such as s3://bucket/challenges/2020")
    return S3Location(parts.netloc, prefix)


def _boto() -> Any:
    try:
        import boto3
        import botocore
    except ImportError:
        raise UsageError("s3:// needs boto3, which is not installed",
                         "pip install 'isic2020[s3]'") from None
    return boto3, botocore


def presign_seconds() -> float:
    value = config.load().s3_presign_seconds
    return DEFAULT_PRESIGN_SECONDS if value is None else value


def describe_error(exc: BaseException, where: str) -> Exception:
    """A boto3/botocore exception as the one-line error the CLI prints (never a traceback)."""
    _, botocore = _boto()
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return UsageError(f"{where}: no AWS credentials found", "set AWS_ACCESS_KEY_ID/"
                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run on an instance role")
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = str(err.get("Message") or code or f"HTTP {status}")
        if code in _LATER_FIXES:
            return StoreUnavailable(f"{where}: {msg}", _LATER_FIXES[code])
        if code in _USER_FIXES or code == "404" or status in (403, 404):
            key = code if code in _USER_FIXES else (
                "AccessDenied" if status == 403 else "NoSuchBucket")
            return UsageError(f"{where}: {msg} ({code or status})", _USER_FIXES[key])
        return StoreUnavailable(f"{where}: {msg} ({code or status})",
                                "check the endpoint and run again")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StoreUnavailable(f"{where}: {exc}",
                                "check AWS_ENDPOINT_URL and the network, then run again")
    return StoreUnavailable(f"{where}: {type(exc).__name__}: {exc}", "run again")


@contextlib.contextmanager
def store_errors(where: str) -> Iterator[None]:
    """Turn what boto3 raises inside the block into our one-line errors."""
    _, botocore = _boto()
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise describe_error(exc, where) from None


def make_client(*, signed: bool | None = None) -> tuple[Any, bool]:
    """An S3 client from the standard chain, and whether it signs (False: no credentials)."""
    boto3, botocore = _boto()
    from botocore.config import Config

    session = boto3.session.Session()
    if signed is None:
        signed = session.get_credentials() is not None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {
        "retries": {"max_attempts": 3, "mode": "standard"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "signature_version": "s3v4" if signed else botocore.UNSIGNED,
    }
    if endpoint:
        options["s3"] = {"addressing_style": "path"}
    region = session.region_name or "us-east-1"
    client = session.client("s3", endpoint_url=endpoint or None, region_name=region,
                            config=Config(**options))
    return client, signed


class ObjectStore:
    """One ``s3://bucket/prefix``: stat, upload, list, and the URL folder the engine reads."""

    def __init__(self, location: S3Location, client: Any, signed: bool) -> None:
        self.location = location
        self.client = client
        self.signed = signed

    @classmethod
    def connect(cls, url: str) -> ObjectStore:
        location = parse_s3_url(url)
        client, signed = make_client()
        return cls(location, client, signed)

    # -- reading ----------------------------------------------------------------------------
    def stat(self, name: str) -> ObjectStat | None:
        """Size and ETag of ``name`` under the prefix, or None when there is no such object."""
        with store_errors(f"{self.location.url}/{name}"):
            try:
                head = self.client.head_object(Bucket=self.location.bucket,
                                               Key=self.location.key(name))
            except self._client_error() as exc:
                if _status(exc) == 404:
                    self.check_bucket()  # a missing bucket says so, not "no such object"
                    return None
                raise
        return ObjectStat(int(head["ContentLength"]), normalize_etag(head.get("ETag")) or "",
                          dict(head.get("Metadata") or {}))

    def listing(self) -> dict[str, ObjectStat]:
        """Every object under the prefix (one paged LIST), by its name below the prefix."""
        start = self.location.key("")
        out: dict[str, ObjectStat] = {}
        with store_errors(self.location.url):
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.location.bucket, Prefix=start):
                for o in page.get("Contents", []):
                    out[o["Key"][len(start):]] = ObjectStat(
                        int(o["Size"]), normalize_etag(o.get("ETag")) or "")
        return out

    def get(self, name: str, limit: int = 16 * MiB) -> bytes | None:
        """A small object's bytes (an index, a manifest), or None when there is none."""
        where = f"{self.location.url}/{name}"
        with store_errors(where):
            try:
                r = self.client.get_object(Bucket=self.location.bucket,
                                           Key=self.location.key(name))
            except self._client_error() as exc:
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    return None
                raise
            if int(r.get("ContentLength") or 0) > limit:
                r["Body"].close()
                raise UsageError(f"{where} is larger than {limit} bytes",
                                 "this is not a small isic2020 object; check the s3:// URL")
            return bytes(r["Body"].read())

    def delete(self, name: str) -> None:
        """Remove ``name`` under the prefix (no error when it is already gone)."""
        with store_errors(f"{self.location.url}/{name}"):
            self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key(name))

    def check_bucket(self) -> None:
        """Raise the one-line error for a bucket that is missing or not ours to read."""
        with store_errors(self.location.url):
            try:
                self.client.list_objects_v2(Bucket=self.location.bucket, MaxKeys=1,
                                            Prefix=self.location.key(""))
            except self._client_error() as exc:
                if _status(exc) == 403 and _code(exc) == "AccessDenied":
                    return  # GetObject without ListBucket: allowed, the objects will tell
                raise

    def missing(self, names: list[str]) -> list[str]:
        """The names that have no object under the prefix (one HEAD each)."""
        return [n for n in names if self.stat(n) is None]

    def http_base(self) -> str:
        """The plain URL folder of the prefix, as the client addresses it (ends with '/')."""
        probe = "isic2020-probe"
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.location.bucket,
                                  "Key": self.location.key(probe)}, ExpiresIn=60)
        plain = url.split("?", 1)[0]
        return plain[: -len(probe)]

    def presign(self, method: str, name: str, part_number: int | None = None) -> str:
        op = "head_object" if method.upper() == "HEAD" else "get_object"
        params: dict[str, Any] = {"Bucket": self.location.bucket, "Key": self.location.key(name)}
        if part_number is not None:
            params["PartNumber"] = part_number
        return str(self.client.generate_presigned_url(op, Params=params,
                                                      ExpiresIn=int(presign_seconds())))

    def mirror_base(self) -> str:
        """The URL folder for the engine; with credentials, its requests are presigned by
        every session made from now on (:class:`PresigningAdapter`)."""
        base = self.http_base()
        if self.signed:
            http.mount_adapter(base, PresigningAdapter(self, base))
        return base

    # -- writing ----------------------------------------------------------------------------
    def upload(self, name: str, path: Path, *, on_bytes: Callable[[int], None] | None = None,
               metadata: dict[str, str] | None = None, resume: bool = True) -> ObjectStat:
        """Upload the file at ``path`` as ``name`` (one PUT, or multipart in PART_SIZE parts,
        resuming a cut-off upload unless ``resume`` is False); returns what the store then
        says of it. ``metadata`` becomes the object's ``x-amz-meta-*`` (a resumed upload keeps
        the metadata it was started with: callers that rely on it check the returned stat)."""
        size = path.stat().st_size
        where = f"{self.location.url}/{name}"
        extra = {"Metadata": metadata} if metadata else {}
        with store_errors(where):
            if size <= PART_SIZE:
                with open(path, "rb") as f:
                    data = f.read()
                self.client.put_object(Bucket=self.location.bucket,
                                       Key=self.location.key(name), Body=data, **extra)
                if on_bytes is not None:
                    on_bytes(len(data))
            else:
                self._multipart(name, path, size, on_bytes, extra, resume)
        stat = self.stat(name)
        if stat is None:
            raise StoreUnavailable(f"{where}: the upload finished but the object is not there",
                                   "run again")
        return stat

    def _multipart(self, name: str, path: Path, size: int,
                   on_bytes: Callable[[int], None] | None, extra: dict[str, Any],
                   resume: bool) -> None:
        bucket, key = self.location.bucket, self.location.key(name)
        upload_id, have = self._resumable_upload(key) if resume else (None, {})
        if upload_id is None:
            upload_id = self.client.create_multipart_upload(Bucket=bucket, Key=key,
                                                            **extra)["UploadId"]
        count = -(-size // PART_SIZE)
        etags: dict[int, str] = {}
        slots = threading.BoundedSemaphore(UPLOAD_THREADS + 1)  # parts in memory at once
        futures: list[Future[None]] = []

        def send(number: int, data: bytes) -> None:
            try:
                r = self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                            PartNumber=number, Body=data)
                etags[number] = str(r["ETag"])
                if on_bytes is not None:
                    on_bytes(len(data))
            finally:
                slots.release()

        with open(path, "rb") as f, ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            for number in range(1, count + 1):
                slots.acquire()
                data = f.read(PART_SIZE)
                md5 = hashlib.md5(data).hexdigest()
                if normalize_etag(have.get(number)) == md5:
                    etags[number] = have[number]
                    slots.release()
                    continue
                futures.append(pool.submit(send, number, data))
                del data
            for fut in futures:
                fut.result()
        parts = [{"ETag": etags[n], "PartNumber": n} for n in range(1, count + 1)]
        self.client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})

    def _resumable_upload(self, key: str) -> tuple[str | None, dict[int, str]]:
        """An unfinished multipart upload of ``key`` (from a run that was cut off) and the
        ETags of its parts; the newest one is kept, older ones are aborted."""
        try:
            found = self.client.list_multipart_uploads(Bucket=self.location.bucket, Prefix=key)
        except self._client_error():
            return None, {}
        uploads = sorted((u for u in found.get("Uploads", []) if u.get("Key") == key),
                         key=lambda u: u.get("Initiated", 0))
        if not uploads:
            return None, {}
        for old in uploads[:-1]:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.location.bucket, Key=key,
                                                   UploadId=old["UploadId"])
        upload_id = uploads[-1]["UploadId"]
        have: dict[int, str] = {}
        paginator = self.client.get_paginator("list_parts")
        with contextlib.suppress(self._client_error()):
            for page in paginator.paginate(Bucket=self.location.bucket, Key=key,
                                           UploadId=upload_id):
                for p in page.get("Parts", []):  # each is compared with its local MD5
                    have[int(p["PartNumber"])] = str(p["ETag"])
            return upload_id, have
        return None, {}

    def _client_error(self) -> type[Exception]:
        return self.client.exceptions.ClientError  # type: ignore[no-any-return]


def s3_mirror(url: str, names: Sequence[str] = ()) -> str:
    """The URL folder the engine reads for the mirror ``url``, once its bucket answers and
    every one of ``names`` is there (one line naming what is missing otherwise, exit 2)."""
    store = ObjectStore.connect(url)
    store.check_bucket()
    missing = store.missing(list(names))
    if missing:
        raise UsageError(
            f"{store.location.url} has no {', '.join(missing)}",
            "publish them there with `isic2020 mirror`, or fix the prefix of the s3:// URL")
    return store.mirror_base()


def upload_etag(path: Path) -> tuple[str, str]:
    """The sha256 of the file at ``path`` and the ETag :meth:`ObjectStore.upload` gives it in
    the store (MD5, or multipart MD5 in PART_SIZE parts), in one pass."""
    sha = hashlib.sha256()
    md5 = hashlib.md5()
    multi = MultipartHasher(PART_SIZE)
    size = 0
    with open(path, "rb") as f:
        while block := f.read(MiB):
            sha.update(block)
            md5.update(block)
            multi.update(block)
            size += len(block)
    etag = md5.hexdigest() if size <= PART_SIZE else multi.hexdigest()
    return sha.hexdigest(), etag


def _status(exc: Any) -> int | None:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(exc: Any) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class PresigningAdapter(HTTPAdapter):
    """Sends each request under ``base`` to a presigned URL for its method and query.

    The engine addresses objects by their plain URL; this adapter (mounted on every session
    :func:`isic2020.transfer.http.make_session` makes) swaps in a presigned one just before the
    request leaves, so nothing above it knows about signing. URLs are cached per (method, key,
    partNumber) until a minute before they expire; a 403 makes one anew and sends once more.
    """

    def __init__(self, store: ObjectStore, base: str) -> None:
        super().__init__(pool_connections=2, pool_maxsize=64, max_retries=0)
        self.store = store
        self.base = base
        self._cache: dict[tuple[str, str, int | None], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.presigned = 0  # URLs made (tests and benchmarks count them)

    def _url(self, method: str, url: str, fresh: bool) -> str:
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if not k.lower().startswith(_PRESIGN_PARAMS)]
        part = next((int(v) for k, v in query if k == "partNumber" and v.isdigit()), None)
        plain = url.split("?", 1)[0]
        name = unquote(plain[len(self.base):])
        key = (method, name, part)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and not fresh and hit[1] > now:
                return hit[0]
        signed = self.store.presign(method, name, part)
        with self._lock:
            self._cache[key] = (signed, now + max(1.0, presign_seconds() - 60.0))
            self.presigned += 1
        return signed

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        method = (request.method or "GET").upper()
        original = request.url
        request.url = self._url(method, original, fresh=False)
        resp = super().send(request, *args, **kwargs)
        if resp.status_code != 403:
            return resp
        resp.close()
        request.url = self._url(method, original, fresh=True)
        return super().send(request, *args, **kwargs)
