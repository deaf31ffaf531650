"""The browser end-to-end test is never silently skipped in CI: a missing chromium fails it there."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    import tests.test_browser_e2e as e2e

    monkeypatch.setattr(e2e, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="chromium not found"):
        e2e.require_browser()


def test_present_browser_passes_the_gate(monkeypatch):
    import shutil
    from pathlib import Path

    import tests.test_browser_e2e as e2e

    if not Path(e2e.CHROMIUM).exists():
        pytest.skip("no chromium on this machine")
    monkeypatch.setenv("CI", "true")
    e2e.require_browser()  # raises nothing
    assert shutil.which("chromium") or Path(e2e.CHROMIUM).exists()
