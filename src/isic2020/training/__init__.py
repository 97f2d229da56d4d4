"""From verified images to training: resized copies, WebDataset and Parquet shards, datasets.

The layer of ``checks`` and ``archive``: it reads what the store holds and what the catalog
describes, and may use transfer (object stores); it never imports commands or the CLI.
"""
