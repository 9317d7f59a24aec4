"""Errors caused by user input: reported as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (arguments, files, labels). The message names what and where."""


class DataError(UserError):
    """A dataset file is missing, unreadable or malformed."""


class ConfigError(UserError):
    """An unknown name or an invalid value in the configuration or on the command line."""


class EvaluationError(UserError):
    """Evaluation of a trained run failed; the run folder keeps the trained network and history."""


class WriteError(UserError):
    """A file or folder cannot be written (read-only, no permission, no space, too large)."""
