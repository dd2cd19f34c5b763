"""Optional failure notifier: POST a JSON message to ``settings.alert_webhook_url`` (Slack/Teams/any webhook).

Unset: nothing is sent (the failure is still logged by the caller). Never raises to the caller's caller: the
Airflow callback wraps it, because a broken notifier must not hide the failure it reports.
"""

from __future__ import annotations

import logging

from ml.settings import Settings, get_settings

log = logging.getLogger(__name__)


def notify(text: str, settings: Settings | None = None) -> bool:
    """Send ``text`` to the configured webhook as ``{"text": ...}``. Returns True if a message was delivered."""
    s = settings or get_settings()
    if not s.alert_webhook_url:
        return False
    import httpx

    from ml.redact import mask_webhook

    where = mask_webhook(s.alert_webhook_url)  # the webhook's path is its credential: never logged or raised
    try:
        resp = httpx.post(s.alert_webhook_url, json={"text": text}, timeout=10)
        resp.raise_for_status()
    except httpx.HTTPStatusError as e:
        raise RuntimeError(f"webhook {where} answered HTTP {e.response.status_code}") from None
    except httpx.HTTPError as e:
        raise RuntimeError(f"webhook {where} unreachable: {type(e).__name__}") from None
    log.info("failure notice sent to %s", where)
    return True
