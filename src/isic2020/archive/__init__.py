"""Zip archives: read through a ``read_at(offset, size)`` callable, never opening HTTP itself.

End records and the central directory, the rules an entry must pass (names, bombs, image
naming), and unpacking: after the download (local), during it (streaming) or member by member
from a remote zip (remote).
"""
