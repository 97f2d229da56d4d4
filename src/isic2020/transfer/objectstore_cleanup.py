"""Unfinished multipart uploads under a prefix: what an upload cut off by a kill leaves behind.

Their parts are invisible (no object, no LIST entry) yet stored and billed. While a re-run may
still resume them (:meth:`isic2020.transfer.objectstore.ObjectStore.upload` keeps the parts
whose MD5 matches) they are left alone; once the work that could resume them is complete, the
caller aborts those of its own names here. Uploads of names the caller does not own are never
touched, and a store that refuses the listing (no ``s3:ListBucketMultipartUploads``) costs
nothing but the cleanup: the finished work stands.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from isic2020.errors import Isic2020Error
from isic2020.transfer.objectstore import ObjectStore, store_errors


def abort_unfinished(store: ObjectStore, ours: Callable[[str], bool]) -> list[str]:
    """Abort every unfinished multipart upload under the prefix whose name (below the prefix)
    ``ours`` accepts; returns those names."""
    start = store.location.key("")
    bucket = store.location.bucket
    aborted: list[str] = []
    with contextlib.suppress(Isic2020Error), store_errors(store.location.url):
        pages = store.client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=bucket, Prefix=start):
            for upload in page.get("Uploads", []):
                name = str(upload["Key"])[len(start):]
                if ours(name):
                    store.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                        UploadId=upload["UploadId"])
                    aborted.append(name)
    return aborted
