"""Shared pieces of the absl command-line scripts."""

import sys

from absl import logging

# Errors that mean the user gave a bad value: the scripts print them as one line and exit with 1.
# Every other exception keeps its traceback, because it is a bug rather than bad input.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def run_or_exit(function, *args, **kwargs):
    """Call `function`; on a user error, log it and exit with status 1 and a one-line message."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        message = " ".join(str(error).split())
        logging.error("%s", message)
        sys.exit(f"Error: {message}")
