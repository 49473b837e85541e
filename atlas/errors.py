"""The one exception type for mistakes a user can fix; everything else is a bug."""


class AtlasError(Exception):
    """A user error: the command line prints its message as one line and exits non-zero."""
