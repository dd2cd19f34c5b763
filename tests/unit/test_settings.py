from __future__ import annotations

from pathlib import Path

import pytest

from ml.settings import Settings


def test_defaults_do_not_need_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("PROPENSITY_POSTGRES_URL", "PROPENSITY_REDIS_URL", "PROPENSITY_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.postgres_url is None and s.redis_url is None
    assert s.state_dir == tmp_path / ".local"
    assert s.location("landing") == str(tmp_path / ".local" / "landing")


def test_environment_beats_dotenv_beats_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PROPENSITY_SCORE_BUCKETS=5\nPROPENSITY_REDIS_PREFIX=fromfile\n")
    monkeypatch.setenv("PROPENSITY_SCORE_BUCKETS", "11")
    s = Settings()
    assert s.score_buckets == 11  # env wins over .env
    assert s.redis_prefix == "fromfile"  # .env wins over the default


def test_keyword_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_POSTGRES_URL", "postgresql://env/db")
    assert Settings(postgres_url="postgresql://kw/db").postgres_url == "postgresql://kw/db"
    assert Settings().postgres_url == "postgresql://env/db"


def test_object_storage_locations_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_LANDING_URL", "s3://bucket/landing")
    assert Settings().location("landing") == "s3://bucket/landing"


def test_invalid_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_SCORE_BUCKETS", "many")
    with pytest.raises(ValueError, match="score_buckets"):
        Settings()


@pytest.mark.parametrize("value", ["0", "-2"])
def test_publish_workers_below_one_is_rejected(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PROPENSITY_PUBLISH_WORKERS", value)
    with pytest.raises(ValueError, match=r"publish_workers\n.*greater than or equal to 1"):
        Settings()
