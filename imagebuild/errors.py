"""Errors a user can cause, reported as one clear message each (never a traceback)."""


class ImagebuildError(Exception):
    """A failure explained in words; the CLI prints it and exits 1."""
