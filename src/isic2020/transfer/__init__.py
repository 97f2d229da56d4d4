"""Bytes from servers onto disk, proven. It knows nothing about zips: what the bytes mean is
the archive layer's business, which it learns through the TransferObserver seam.

The modules (no import cycles; ``engine`` on top, ``model``, ``intervals`` and ``retry`` at the
bottom):

- ``engine``: ``Downloader``, the public entry: one object from a list of URLs, verified, landed;
- ``ranged``: one ranged transfer of one object (partial file, pool, hashing, checkpoints);
- ``single``: one plain stream (no ranges or no size), and ``file://`` copies;
- ``probe``: HEAD (size, ETag, part size); ``verdict``: what proves the bytes (``etag_check``);
- ``pool``: ONE worker pool running byte spans over N connections (the engine's chunks, the
  archive layer's members); ``ranges``: the strict ranged GET (``RangeClient``);
- ``retry`` (policy, ``HostFailed``, the progress window), ``throttle`` (AIMD), ``speed``
  (lowest-speed rule), ``http`` (the one session factory);
- ``partial`` (partial and state files), ``checkpoint``, ``hashers`` (digests while
  downloading), ``digests`` (what an ETag proves), ``repair``, ``intervals``, ``observer``,
  ``model`` (options, ``RemoteObject``, ``DownloadResult``).
"""
