"""The runtime: contexts that own a backend, its buffers and the routines compiled for it."""
