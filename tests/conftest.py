"""Shared pytest configuration: hypothesis profiles and JAX settings for the test suite."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

# JIT compilation makes the first example of a property slow: no per-example deadline.
settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def set_trace_constant(monkeypatch):
    """``set_trace_constant("module.NAME", value)``: monkeypatch a constant read at trace time.

    JAX caches traces per Python function, across ``jax.jit`` wrappers, so a patched constant
    would not reach a function traced before with the same argument shapes: the caches are
    cleared when a constant is set and again at teardown (no later test reuses a trace made with
    the patched value).
    """

    def set_constant(target: str, value):
        jax.clear_caches()
        monkeypatch.setattr(target, value)

    yield set_constant
    jax.clear_caches()
