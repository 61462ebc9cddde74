"""User-facing errors: one line that says what to change."""


class ConfigError(ValueError):
    """Bad input in the configuration (unknown name, value out of range, missing file).

    The CLI prints ``str(err)`` on one line and exits with status 2 instead of a traceback.
    """
