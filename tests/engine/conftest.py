"""Engine fixtures: the shared harness (``tests.harness``)."""

from tests.harness import Harness, engine_settings, harness, make_principal

__all__ = ["Harness", "engine_settings", "harness", "make_principal"]
