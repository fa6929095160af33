"""The runtime: a backend, its buffers and where their newest values are, and the executables
compiled for it."""
