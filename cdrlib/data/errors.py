"""The one error type of the data layer: raised with a message that says what to do."""


class DataError(RuntimeError):
    """Data missing, misplaced or corrupted. The message names the path and the fix."""
