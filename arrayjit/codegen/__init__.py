"""Code generation from the loop IR."""
