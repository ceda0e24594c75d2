"""Performance and transfer benchmarks; each writes its results under docs/benchmarks/."""
