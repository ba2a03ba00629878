"""Notifications the sandboxes keep instead of posting them (``notifyMode: hold``), for tests that decide themselves
when, how often and in which order a notification arrives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

__all__ = ["HeldNotification", "NOTIFY_MODES"]

#: ``send``: post each notification at once and retry it until acknowledged (the default, what the providers do);
#: ``hold``: keep it on the sandbox object (``held_notifications()`` / ``take_notifications()``), post nothing.
NOTIFY_MODES = ("send", "hold")


@dataclass(frozen=True)
class HeldNotification:
    """One notification exactly as the sandbox would have posted it: ``body`` (the exact bytes), ``headers`` (the
    ``Content-Type`` it is sent with) to ``url`` (the trade's ``notify_url``, or the refund's). ``provider`` is
    ``"alipay"`` or ``"wechat"``, ``reference`` the trade's ``out_trade_no``, ``event`` what happened (``"paid"``,
    ``"failed"`` or ``"refund"``), ``at`` when (aware, Beijing time)."""

    provider: str
    reference: str
    event: str
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    at: datetime | None = None

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` header it is posted with."""
        return self.headers.get("Content-Type", "")

    def deliver(self, *, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        """POST it once, byte for byte, to its ``url`` (as the provider does, without following redirects) and return
        the merchant's response. Deliver it as often and in whatever order a test likes; the sandbox does not record
        these attempts."""
        with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False, **kwargs) as client:
            return client.post(self.url, content=self.body, headers=dict(self.headers))
