"""Issue 5: production mode refuses to start without its secrets."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import free_port

PROD = {"HERALD_ENV": "production", "HERALD_SECRET_KEY": "", "HERALD_API_KEYS": "",
        "HERALD_ALLOWED_ORIGINS": ""}
GOOD = {"HERALD_SECRET_KEY": "s" * 40, "HERALD_API_KEYS": "k1" * 16,
        "HERALD_ALLOWED_ORIGINS": "https://app.example"}


@pytest.mark.parametrize("missing", ["HERALD_SECRET_KEY", "HERALD_API_KEYS",
                                     "HERALD_ALLOWED_ORIGINS"])
def test_production_without_a_secret_exits_with_a_clear_message(runner: Any,
                                                                missing: str) -> None:
    env = {**PROD, **GOOD, missing: ""}
    for role in (["run", "frontend", "--port", str(free_port())], ["run", "worker"]):
        result = runner(*role, check=False, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "production mode" in result.stderr and missing in result.stderr


def test_production_refuses_a_short_secret(runner: Any) -> None:
    result = runner("token", "--user", "u", check=False,
                    env={**PROD, **GOOD, "HERALD_SECRET_KEY": "short"})
    assert result.returncode == 2 and "at least 32 characters" in result.stderr


def test_development_warns_loudly_about_a_generated_secret(runner: Any, tmp_path: Any) -> None:
    result = runner("token", "--user", "u", env={"HERALD_SECRET_KEY": "",
                                                 "HERALD_ENV": "development",
                                                 "HERALD_VAR_DIR": str(tmp_path)})
    assert "HERALD_SECRET_KEY is not set" in result.stderr
    assert (tmp_path / "dev-secret-key").read_text().strip()
    assert result.stdout.count(".") == 2  # a JWT was printed


def test_secrets_without_a_mode_refuse_to_start(runner: Any) -> None:
    """Secrets set, HERALD_ENV forgotten: every role refuses instead of guessing
    development (whose /demo/token hands out tokens for any user)."""
    env = {"HERALD_ENV": "", "HERALD_SECRET_KEY": "s" * 40, "HERALD_API_KEYS": "k" * 40}
    for role in (["run", "frontend", "--port", str(free_port())], ["run", "worker"]):
        result = runner(*role, check=False, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "HERALD_ENV is not" in result.stderr and "HERALD_ENV=production" in result.stderr


@pytest.mark.parametrize(("name", "value"), [
    ("HERALD_SECRET_KEY", "EXAMPLE-replace-with-a-random-secret-of-at-least-32-characters"),
    ("HERALD_API_KEYS", "EXAMPLE-replace-with-a-random-api-key"),
    ("HERALD_API_KEYS", "short-key")])
def test_production_refuses_example_and_short_keys(runner: Any, name: str, value: str) -> None:
    result = runner("run", "frontend", "--port", str(free_port()), check=False,
                    env={**PROD, **GOOD, name: value})
    assert result.returncode == 2, result.stderr[-2000:]
    assert name in result.stderr
