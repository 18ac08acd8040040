"""The CLI's error type: a one-line reason on stderr and exit code 2."""


class CliError(Exception):
    """Bad settings, bad arguments or an unreachable store: reported as one line, exit code 2."""
