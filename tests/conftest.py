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

# Most of the suite's time is XLA compiling many small programs: skip LLVM's optimisation passes
# (the XLA graph passes, and hence every result, are unchanged; tiny test shapes run no slower).
# Appended to any XLA_FLAGS already set; child processes the tests start inherit it.
_FAST_COMPILE = "--xla_backend_optimization_level=0"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
