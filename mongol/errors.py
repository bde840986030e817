"""The error types the CLIs turn into one line on stderr."""


class MongolError(Exception):
    """A problem the user can fix, described in one full sentence."""


class StoreError(MongolError):
    """The store cannot be opened or reached."""


class StoreUnavailable(StoreError):
    """The store is configured right but does not answer now (a MongoDB server down): hits wait in
    the spool and the writer keeps trying."""


class StoreMoved(StoreError):
    """The store's file was removed or replaced while open: it must be opened again, never written
    through the old handle."""
