"""The one error type of the data layer: raised with a message that says what to do."""


class DataError(RuntimeError):
    """Data missing, misplaced or corrupted. The message names the path and the fix."""

    def _render_traceback_(self):
        # IPython shows this instead of a traceback: in a notebook the message is the whole story.
        return [
            f"DataError: {line}" if i == 0 else line
            for i, line in enumerate(str(self).splitlines())
        ]
