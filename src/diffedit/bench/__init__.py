"""Benchmarks: ShapeEdit quality and speed."""
