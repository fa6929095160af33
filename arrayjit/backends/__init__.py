"""Backends: turn loop IR into something that runs (C shared objects, CUDA kernels)."""
