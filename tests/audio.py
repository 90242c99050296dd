"""Test audio comes from the benchmarks' generator, so tests and benchmarks stream the same kind of signal."""

from benchmarks.audio import synth_speechlike, to_float32

__all__ = ["synth_speechlike", "to_float32"]
