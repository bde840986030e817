"""The error types the CLIs turn into one line on stderr."""


class MongolError(Exception):
    """A problem the user can fix, described in one full sentence."""


class StoreError(MongolError):
    """The store cannot be opened or reached."""
