"""openbuda: a self-hostable runtime for AI agents that work in isolated sessions."""

from openbuda._version import __version__

__all__ = ["__version__"]
