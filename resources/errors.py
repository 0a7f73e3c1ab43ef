"""Errors a user can cause with files: each message names the file or tensor and what is wrong."""


class AdapterFormatError(ValueError):
    """An adapter directory is missing, partial, corrupt, or holds the wrong tensors."""


class StoreError(ValueError):
    """A store name is unsafe or a stored object is missing."""


class SlotError(ValueError):
    """A slot operation was refused or found the slot in a state it cannot use; says why."""


class SlotConflictError(SlotError):
    """Compare-and-swap failed: the slot is not at the generation the caller expected."""


class SlotLockedError(SlotError):
    """Another promoter held the slot's lock for longer than the lock timeout."""
