"""Tools for developing and showing the pipeline: the demo, `make run`, the process launcher."""
