"""The fixtures of tests/unit/models; helpers live in model_fixtures.py (importable by name)."""

from model_fixtures import locked_model  # noqa: F401 - a fixture, registered by being imported here
