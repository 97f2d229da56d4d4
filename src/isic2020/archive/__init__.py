"""Zip archives, read through a ``read_at(offset, size)`` callable, never opening HTTP itself.

Modules, bottom up (no cycle; each knows only those before it):

* ``zipformat``: the one parser (end records, ZIP64, central directory, local headers).
* ``rules``: the one set of rules (unsafe names, bombs, image naming, duplicates) and messages.
* ``decode``: inflate + bound + CRC-32 + write, once (with ``Flusher`` and ``write_all``).
* ``staging``, ``workers``, ``local``: a landed archive into the layout (forked workers).
* ``streaming``: unpacking while the archive downloads (a ``TransferObserver``).
* ``remote`` (directory + cache), ``pool`` (the range pool, zip-free), ``spans`` (a span's
  bytes into files), ``members`` (choose and fetch members), ``direct`` (the whole job, with
  failover): members straight from a server's zip.
"""
