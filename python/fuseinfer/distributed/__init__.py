"""Parallel execution: the parallel state a model runner is built with (rank, world size,
process group). One rank today; tensor parallelism adds its groups and collectives here
without a new seam in the runtime."""
