"""The benchmark's pieces; benchmarks/run.py is the entry point."""
