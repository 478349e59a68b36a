"""hypothesis's given / settings / strategies / HealthCheck, or stand-ins that skip the property tests.

A CUDA machine image may ship pytest without hypothesis (make gpu-check runs the kernel tests there with only
what the image has): the property tests then skip with this reason, and every other test still runs.
"""
from __future__ import annotations

import pytest

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover (exercised on machines without hypothesis)
    REASON = "hypothesis is not installed"

    class _Anything:
        """Stands for hypothesis.strategies and HealthCheck: every attribute and call gives another stand-in."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

    st = HealthCheck = _Anything()

    def settings(*args, **kwargs):
        return lambda fn: fn

    def given(*args, **kwargs):
        def skipped(fn):
            def test():
                pytest.skip(REASON)

            test.__name__, test.__doc__ = fn.__name__, fn.__doc__
            return test

        return skipped

__all__ = ["HealthCheck", "given", "settings", "st"]
