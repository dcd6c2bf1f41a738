"""Errors a user's run configuration can cause before anything trains."""


class SetupError(RuntimeError):
    """A run cannot start (missing data, model or FRE checkpoint, ...); the message is one line meant for users."""
