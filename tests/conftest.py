"""Shared pytest configuration: hypothesis profiles and JAX settings for the test suite."""

import os

from hypothesis import HealthCheck, settings

# JIT compilation makes the first example of a property slow: no per-example deadline.
settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
