"""S3Server: moto's S3 in server mode on 127.0.0.1, for objects as boto3 makes them (real
multipart ETags, S3's error XML). moto and boto3 are imported on first use, so the other
servers work without them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .common import Lifecycle, free_port


class S3Server(Lifecycle):
    """moto's S3 in server mode on 127.0.0.1, plus upload helpers.

    Objects are uploaded ``public-read`` by default: moto, like S3, answers 403 to anonymous
    GET/HEAD of a private object, and the ISIC bucket is public, so the download client talks
    to it with plain ``requests`` and no credentials. (A bucket policy granting
    ``s3:GetObject`` to ``*`` lets anonymous GET through in moto 5.2, but not HEAD, hence ACLs.)

    moto keeps its state in process-wide backends: use distinct bucket names per test.
    ``min_part_size`` lowers moto's 5 MiB minimum multipart part size (a module global of
    ``moto.s3.models``), so multipart objects can be small and tests fast.

    What moto 5.2 does like S3 (checked by tests/harness/test_support_servers.py): single-PUT md5
    and multipart ``md5-N`` ETags; ``Range`` (``a-b``, ``a-``, ``-n``) with 206 and
    ``Content-Range``; 416 (S3 XML ``InvalidRange``, no ``Content-Range`` header) when
    unsatisfiable; ``If-Match`` (412) and ``If-None-Match`` (304) on GET and HEAD; multi-range
    answered 200 with the whole object; no ``Content-Encoding``. ``HEAD ?partNumber=K`` gives
    the part's ``Content-Length`` and ``x-amz-mp-parts-count``.

    Where moto differs from S3 (use :class:`FaultServer` to test those paths):
    ``HEAD ?partNumber=K`` on a multipart object answers 200 (S3: 206), with no
    ``Content-Range`` and the *part's* md5 as ETag (S3: the whole object's ETag);
    ``GET ?partNumber=K`` ignores the part and sends the whole object with 200; a ``partNumber``
    beyond the last part is a 500 (S3: 416 ``InvalidPartNumber``); ``Range`` together with
    ``partNumber`` is served as a range (S3: 400); ``If-Range`` is ignored (a stale validator
    still gets 206; RFC 9110 and nginx send 200 with the whole body).
    """

    REGION = "us-east-1"

    def __init__(self, *, min_part_size: int | None = 1) -> None:
        self.min_part_size = min_part_size
        self._server: Any = None
        self.port = 0
        self._client: Any = None

    def start(self) -> S3Server:
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        if self.min_part_size is not None:
            import moto.s3.models as s3_models

            s3_models.S3_UPLOAD_PART_MIN_SIZE = self.min_part_size  # type: ignore[attr-defined]
        last: Exception | None = None
        for _attempt in range(5):
            port = free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            try:
                server.start()
            except OSError as exc:  # port raced away
                last = exc
                continue
            self._server, self.port = server, port
            break
        else:
            raise RuntimeError(f"moto server did not start: {last}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.02)
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    stop = close

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the boto3 ``endpoint_url``, and the path-style base."""
        if not self.port:
            raise RuntimeError("S3Server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> Any:
        """A boto3 S3 client for this server: dummy keys given explicitly (no env, no
        ~/.aws), path-style addressing, checksums only when required (plain PUTs)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name=self.REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 1, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        return self._client

    def bucket_url(self, bucket: str) -> str:
        """The mirror URL of a bucket: ``http://127.0.0.1:PORT/<bucket>/``."""
        return f"{self.endpoint}/{bucket}/"

    def url_for(self, bucket: str, key: str) -> str:
        return f"{self.endpoint}/{bucket}/{urllib.parse.quote(key)}"

    def create_bucket(self, bucket: str) -> str:
        """Create ``bucket`` (idempotent); returns its URL. Names: 3-63 chars, S3 rules."""
        c = self.client
        with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
            c.create_bucket(Bucket=bucket)
        return self.bucket_url(bucket)

    def upload(
        self,
        bucket: str,
        key: str,
        source: str | os.PathLike[str] | bytes,
        *,
        part_size: int | None = None,
        public: bool = True,
    ) -> str:
        """Upload a file (or bytes) in one PUT, or multipart in ``part_size`` parts; the URL.

        The resulting ETag is the S3 one: md5 for a single PUT, ``md5-of-md5s-N`` multipart.
        """
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        c = self.client
        acl = {"ACL": "public-read"} if public else {}
        if part_size is None:
            c.put_object(Bucket=bucket, Key=key, Body=data, **acl)
        else:
            mp = c.create_multipart_upload(Bucket=bucket, Key=key, **acl)
            parts = []
            try:
                offsets = range(0, len(data), part_size) if data else range(1)
                for i, off in enumerate(offsets, start=1):
                    r = c.upload_part(
                        Bucket=bucket,
                        Key=key,
                        UploadId=mp["UploadId"],
                        PartNumber=i,
                        Body=data[off : off + part_size],
                    )
                    parts.append({"ETag": r["ETag"], "PartNumber": i})
                c.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=mp["UploadId"],
                    MultipartUpload={"Parts": parts},
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=mp["UploadId"])
                raise
        return self.url_for(bucket, key)

    def etag(self, bucket: str, key: str) -> str:
        """The object's ETag as S3 sends it (with quotes)."""
        return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])
