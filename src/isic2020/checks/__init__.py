"""What ``verify`` proves: files against their records, metadata CSVs against their schemas,
images against the metadata (names, counts, decodes)."""
