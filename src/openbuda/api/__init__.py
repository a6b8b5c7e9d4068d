"""The HTTP API (API.md): ``create_app(settings)`` and ``openbuda serve``."""

from openbuda.api.app import create_app

__all__ = ["create_app"]
