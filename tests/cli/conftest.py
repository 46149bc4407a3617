"""Fixtures of the tests that talk HTTP to a real API process."""

from tests.live import live_api

__all__ = ["live_api"]
