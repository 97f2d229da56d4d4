"""Where things live on disk and how they get there safely.

The fixed layout of a data directory, THE atomic writer (temp name, umask mode, fsync, rename),
opens that never follow links planted in the state tree, the lock, and the records of what was
fetched and verified. It knows nothing of manifests, HTTP or zips.
"""
