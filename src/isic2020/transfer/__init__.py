"""Bytes from servers onto disk, proven: the HTTP session, strict ranged GETs, retries and
throttling, the resumable engine, digests while downloading, repair, the lowest-speed rule.

It knows nothing about zips: what the bytes mean is the archive layer's business, which it
learns through the TransferObserver seam.
"""
