"""Atomic file output: readers see either the old file or the complete new one, never a partial file."""

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`, then rename it to `path` when the block succeeds.

    The temporary file lives in the destination folder, so the final `os.replace` is atomic on
    POSIX file systems. If the block raises, the temporary file is removed and `path` is untouched.

    Args:
        path: Final file path. Its parent folder is created when missing.
        suffix: Suffix of the temporary name; defaults to the suffix of `path`, because some writers
            (h5py, Keras) pick the format from it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    os.remove(temporary)  # Writers such as h5py refuse to open an existing empty file in some modes.
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_bytes_atomic(path, data):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as f:
            f.write(data)


def write_text_atomic(path, text):
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, value):
    """Write `value` as indented, key-sorted JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
