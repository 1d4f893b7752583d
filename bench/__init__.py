"""Benchmarks of the pipeline on this machine: `make bench`."""
