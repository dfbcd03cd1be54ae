"""Shared pieces of the absl command-line scripts."""

import sys

from absl import app
from absl import flags
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


def run_script(main, module_name):
    """Run `main` with absl, listing the flags of `module_name` under --helpshort and --help.

    absl lists the key flags of the module named by `sys.argv[0]`. A console script's `sys.argv[0]`
    is its wrapper in `bin/`, which defines no flag, so the flags are registered for that name too.
    """
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    # absl prints the __main__ module's docstring as the usage text; the wrapper has none.
    wrapper = sys.modules.get("__main__")
    if wrapper is not None and not wrapper.__doc__:
        wrapper.__doc__ = sys.modules[module_name].__doc__
    app.run(main)
