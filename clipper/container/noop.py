"""Clipper's noop container as a model function: every input is answered "1.0", as its
``noop_container.py`` answers (Clipper's integration tests and benchmarks deploy it)."""

NOOP_OUTPUT = "1.0"


def predict(inputs):
    return [NOOP_OUTPUT] * len(inputs)
