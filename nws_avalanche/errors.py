"""User-facing errors: the CLI prints their message and exits non-zero, no traceback."""


class NWSError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(NWSError):
    pass


class DataError(NWSError):
    pass


class ArtifactError(NWSError):
    pass
