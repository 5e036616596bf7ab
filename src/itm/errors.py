"""One exception type for every user-facing input problem.

The CLI prints ``error: <message>`` and exits with status 2 for these; anything else is a bug and
keeps its traceback. Messages are one line and name the offending input.
"""


class ItmError(Exception):
    """A problem with the user's input (file, config value, data), reported in one line."""


class DataError(ItmError):
    """A dataset, caption or image file that cannot be used."""


class ConfigError(ItmError):
    """A configuration file or override that cannot be used."""


def shown(name: object) -> str:
    """A file name, key or value for an error message: as is when printable, else quoted with
    escapes, so that a newline or control character in a user's name cannot break the one line."""
    text = str(name)
    return text if text.isprintable() else repr(text)
