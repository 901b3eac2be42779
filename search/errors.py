"""The history package's exceptions; server/errors.py maps them to HTTP status codes."""


class HistoryError(Exception):
    """Base of the history errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(HistoryError):
    """No interaction with that id."""


class InvalidQuery(HistoryError):
    """A search or listing asked for something impossible (no text nor image, limit out of range...)."""


class StoreUnavailable(HistoryError):
    """The vector store cannot be reached now; the journal still holds everything."""
