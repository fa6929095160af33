"""Errors raised by arrayjit."""


class CompileError(RuntimeError):
    """Generated code failed to compile: carries the compiler's message and the source path."""

    def __init__(self, message: str, source_path: str | None = None, log: str = "") -> None:
        self.message = message
        self.source_path = source_path
        self.log = log
        where = f"\n  generated source: {source_path}" if source_path else ""
        details = f"\n{log.rstrip()}" if log else ""
        super().__init__(f"{message}{where}{details}")


class CacheError(RuntimeError):
    """The compile cache's folder cannot be used (not private, not a folder, not writable)."""
