"""Differential fuzzing of ocannl_py: random programs against a numpy reference, and the
spec and DSL parsers against mutated texts. `python -m fuzz --help`; docs/reliability.md."""
