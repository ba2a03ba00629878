"""Which sandbox objects serve which app, so tests holding only the app (``jitcore.load_app``) can reach them."""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["register", "sandbox_of"]

_lock = threading.Lock()
_by_app: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def register(app: Any, provider: str, sandbox: Any) -> None:
    """Remember ``sandbox`` as the ``provider`` sandbox serving ``app`` (the latest one built wins). An app object that
    cannot be weakly referenced (a test's stand-in) is not remembered."""
    with _lock:
        try:
            _by_app.setdefault(app, {})[provider] = sandbox
        except TypeError:
            pass


def sandbox_of(app: Any, provider: str) -> Any:
    """The sandbox object (``AlipaySandbox`` for ``"alipay"``, ``WechatSandbox`` for ``"wechat"``,
    ``WechatV3Sandbox`` for ``"wechatV3"``) whose routes were
    last built for ``app`` (by ``jit_routes``, i.e. ``jitcore.http.build_asgi_app(app)``), or ``None``."""
    with _lock:
        try:
            return _by_app.get(app, {}).get(provider)
        except TypeError:
            return None
