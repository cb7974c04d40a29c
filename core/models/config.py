"""The error every model module raises to users; how images are prepared for a model is
core.data.model_input.DataConfig."""

from __future__ import annotations


class ModelError(ValueError):
    """A model cannot be built or loaded as asked; the message says what to change."""
