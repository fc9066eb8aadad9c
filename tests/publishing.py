"""Settings for the publisher's tests: short backoff, polling, lease and read timeout, so that faults
are retried within a test's time."""

from __future__ import annotations

from typing import Any

from gateway.settings import Settings


def quick_publishing(settings: Settings, url: str, **more: Any) -> Settings:
    """``settings`` publishing to the HIE at ``url``, with ``more`` overriding the quick defaults."""
    return settings.model_copy(
        update={
            "hie_url": url,
            "publish_backoff_seconds": 0.01,
            "publish_backoff_cap_seconds": 0.1,
            "publish_poll_seconds": 0.02,
            "publish_lease_seconds": 5.0,
            "hie_read_timeout": 1.0,
            **more,
        }
    )
