"""Errors that samedit raises for the user to fix. The CLI prints each as one line and exits 1, or 2 for usage."""


class SameditError(Exception):
    """An error caused by input, settings or the environment, with the fix in its message."""


class ModelNotCachedError(SameditError):
    """A model is not in the local cache and cannot be fetched: downloads are off or failed."""


class ModelDownloadError(ModelNotCachedError):
    """A model is not cached and downloading it failed."""


class StageFileError(SameditError):
    """A stage file is unreadable, or was made for another image, size or model."""


class ImageError(SameditError):
    """An image cannot be read or converted."""


class SegmentationError(SameditError):
    """No segment was found, or none matches the requested phrase."""


class UsageError(SameditError):
    """A flag value or a combination of flags is invalid; the CLI exits 2, as for Typer's own usage errors."""
