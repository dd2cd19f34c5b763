"""Failed API logins are limited per client address, and /metrics can require the bearer token (issue 16)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ml.api import create_app
from ml.api_auth import new_api_key

pytestmark = pytest.mark.integration

KEY, KEY_HASH = new_api_key()


def _client(settings, **update) -> TestClient:  # noqa: ANN001
    return TestClient(create_app(settings.model_copy(update={"api_key_hashes": [KEY_HASH], **update})))


def test_failed_logins_are_limited_per_client(settings) -> None:  # noqa: ANN001
    with _client(settings, api_failed_auth_limit="3/minute") as client:
        for _ in range(3):
            assert client.get("/v1/users/1/recommendations", headers={"Authorization": "Bearer wrong"}).status_code == 401
        blocked = client.get("/v1/users/1/recommendations", headers={"Authorization": "Bearer wrong"})
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        assert "failed logins" in blocked.json()["detail"]
        # the address stays blocked for the window, even with a valid key: no guessing at request rate
        assert client.get("/v1/users/1/recommendations", headers={"Authorization": f"Bearer {KEY}"}).status_code == 429


def test_successful_calls_do_not_count_as_failures(settings) -> None:  # noqa: ANN001
    with _client(settings, api_failed_auth_limit="2/minute") as client:
        for _ in range(5):
            r = client.get("/v1/users/1/recommendations", headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code in (200, 404, 503), r.text  # authenticated; nothing published under this prefix
        assert client.get("/v1/users/1/recommendations").status_code == 401


def test_metrics_behind_auth_when_configured(settings) -> None:  # noqa: ANN001
    with _client(settings) as client:
        assert client.get("/metrics").status_code == 200  # default: open, as Prometheus scrapes it
    with _client(settings, api_metrics_auth=True) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and "propensity" in ok.text.lower()
