"""Errors a user can cause with files: each message names the file or tensor and what is wrong."""


class AdapterFormatError(ValueError):
    """An adapter directory is missing, partial, corrupt, or holds the wrong tensors."""


class StoreError(ValueError):
    """A store name is unsafe or a stored object is missing."""
