"""The one exception type users see: a short message that names the bad value and the fix."""

import errno

# Write errors the user fixes with space or another folder; the command line reports them in one line.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class UserError(ValueError):
    """Bad input or a missing model; the CLI prints its message alone, without a traceback."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type's name if it has none), for one-line reports."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
