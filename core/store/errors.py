"""What can go wrong opening or writing a workspace: the errors the app and the jobs show to a person."""

from __future__ import annotations


class WorkspaceError(Exception):
    """A workspace cannot be used as asked; the message says what to do."""


class NotAWorkspaceError(WorkspaceError):
    pass


class SchemaVersionError(WorkspaceError):
    pass


class ReadOnlyWorkspaceError(WorkspaceError):
    """A write to a workspace opened read-only (the app's viewer mode)."""
