"""The one exception type users see: a short message that names the bad value and the fix."""


class UserError(ValueError):
    """Bad input or a missing model; the CLI prints its message alone, without a traceback."""
