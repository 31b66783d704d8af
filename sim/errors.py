"""Errors the simulator raises for bad user input."""


class ConfigError(ValueError):
    """A setting, file or command-line value that cannot work.

    The message names the setting, the bad value, the allowed values and how to fix it, so the
    command line can print it as one line without a traceback.
    """
