"""Suite-wide settings."""

from __future__ import annotations

import pytest

from lamina.generation import step


@pytest.fixture(autouse=True)
def no_automatic_compile(monkeypatch):
    """Module-scoped models generate thousands of tokens over a test file, which would switch them
    to the compiled step part-way (a compile costs 10-60 s on CI's 2 cores). Tests of compilation
    ask for it (`compile_config`) or set the threshold themselves."""
    monkeypatch.setattr(step, "AUTO_COMPILE_TOKENS", 10**12)
