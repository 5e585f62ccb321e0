"""User-facing errors: the CLI prints their message and exits non-zero, no traceback."""


class NWSError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(NWSError):
    pass


class DataError(NWSError):
    pass


class ArtifactError(NWSError):
    pass


class OutputError(NWSError):
    """A file or folder cannot be written (permission, read-only, no space)."""


class DivergedError(NWSError):
    """Training produced a non-finite loss or weights."""
