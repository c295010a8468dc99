"""User-facing errors.

Every problem caused by input (a bad forget spec, an unknown preset, a model without known heads,
an offline hub id, a corrupted cache...) raises :class:`MapeError` with one clear sentence. The CLI
prints it on one line and exits with code 2; the app shows it as a message. Anything else is a bug.
"""


class MapeError(ValueError):
    """An error the user can fix; its message is shown as is."""
