"""Known secret values are set in the environment; no output of the CLI, the logs or an error message contains
any of them (issue 16: secrets printed)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml.redact import RedactingFilter, mask_text, mask_url, masked_settings, secret_values
from ml.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

PG_PASSWORD = "pgSecret-7f3a91"
REDIS_PASSWORD = "rdSecret-c0ffee42"
RATE_PASSWORD = "rlSecret-0badf00d"
WEBHOOK_PATH = "/services/T000/B000/whSecret9d8c7b6a"
JWT_SECRET = "jwtSecret-1234567890abcdef"
SECRETS = [PG_PASSWORD, REDIS_PASSWORD, RATE_PASSWORD, "whSecret9d8c7b6a", JWT_SECRET]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_")}
    env.update(
        {
            # closed ports: the commands must fail to connect, and their errors must not carry the password
            "PROPENSITY_POSTGRES_URL": f"postgresql://pipeline:{PG_PASSWORD}@127.0.0.1:1/propensity",
            "PROPENSITY_REDIS_URL": f"redis://publisher:{REDIS_PASSWORD}@127.0.0.1:1/0",
            "PROPENSITY_API_RATE_LIMIT_STORAGE": f"redis://:{RATE_PASSWORD}@127.0.0.1:1/1",
            "PROPENSITY_ALERT_WEBHOOK_URL": f"https://hooks.slack.com{WEBHOOK_PATH}",
            "PROPENSITY_API_JWT_SECRET": JWT_SECRET,
            "PROPENSITY_STATE_DIR": str(tmp_path / "state"),
        }
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml", *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def _assert_clean(text: str, what: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{what} printed secret(s) {leaked}:\n{text[-2000:]}"


@pytest.mark.integration
@pytest.mark.parametrize(
    "args",
    [["settings"], ["services", "status"], ["--log-level", "DEBUG", "migrate"], ["publish", "--help"]],
    ids=["settings", "services-status", "migrate-error", "help"],
)
def test_cli_outputs_never_print_secrets(args: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path)
    # the working directory is the repo root so `python -m ml` imports this worktree's ml/
    proc = _run(args, env, ROOT)
    _assert_clean(proc.stdout + proc.stderr, " ".join(args))
    if args == ["settings"]:
        assert proc.returncode == 0, proc.stderr
        assert "pipeline:***@127.0.0.1:1/propensity" in proc.stdout  # the shape stays readable
        assert "https://hooks.slack.com/***" in proc.stdout
    if args == ["services", "status"]:
        assert proc.returncode == 0, proc.stderr
        assert "publisher:***@127.0.0.1:1" in proc.stdout
    if args[-1] == "migrate":
        assert proc.returncode != 0  # it really tried the closed port and failed


def test_masked_settings_and_secret_values() -> None:
    s = Settings(
        postgres_url=f"postgresql://pipeline:{PG_PASSWORD}@db:5432/propensity",
        redis_url=f"redis://:{REDIS_PASSWORD}@scores-redis:6379/0",
        alert_webhook_url=f"https://hooks.slack.com{WEBHOOK_PATH}",
        api_jwt_secret=JWT_SECRET,
        api_rate_limit_storage=f"redis://:{RATE_PASSWORD}@r:6379/1?password={RATE_PASSWORD}",
    )
    shown = str(masked_settings(s))
    _assert_clean(shown, "masked_settings")
    assert all(any(secret in v for v in secret_values(s)) for secret in SECRETS)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p%40ss@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql+psycopg2://u:pw@h/d?sslmode=require", "postgresql+psycopg2://u:***@h/d?sslmode=require"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://secretonly@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://api:pw@h:6380/0?ssl_cert_reqs=none", "rediss://api:***@h:6380/0?ssl_cert_reqs=none"),
        ("redis://h:6379/0?password=pw", "redis://h:6379/0?password=***"),
        ("unix:///tmp/r.sock?db=0", "unix:///tmp/r.sock?db=0"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_mask_text_catches_urls_inside_messages() -> None:
    text = "could not connect to postgresql://pipeline:hunter22@db:5432/x (timeout); retry redis://:abc123@r:6379"
    assert mask_text(text) == (
        "could not connect to postgresql://pipeline:***@db:5432/x (timeout); retry redis://:***@r:6379"
    )


def test_log_filter_masks_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    flt = RedactingFilter([JWT_SECRET])
    logger = logging.getLogger("ml.test_redact")
    caplog.handler.addFilter(flt)
    try:
        with caplog.at_level(logging.INFO, logger="ml.test_redact"):
            logger.info("jwt key is %s", JWT_SECRET)
            logger.info("connecting to postgresql://pipeline:%s@db/x", PG_PASSWORD)
            try:
                raise RuntimeError(f"boom with {JWT_SECRET}")
            except RuntimeError:
                logger.exception("failed")
        formatted = "\n".join(caplog.handler.format(r) for r in caplog.records)
    finally:
        caplog.handler.removeFilter(flt)
    _assert_clean(formatted, "log records")
    assert "jwt key is ***" in formatted and "pipeline:***@db" in formatted


def test_notify_error_does_not_carry_the_webhook(tmp_path: Path) -> None:
    from ml.notify import notify

    s = Settings(alert_webhook_url=f"http://127.0.0.1:1{WEBHOOK_PATH}", state_dir=tmp_path)
    with pytest.raises(RuntimeError) as err:
        notify("test", s)
    import traceback

    _assert_clean("".join(traceback.format_exception(err.value)), "notify error")
    assert "hooks" not in str(err.value) and "127.0.0.1/***" in str(err.value)
