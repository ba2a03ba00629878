"""Order ids: time-ordered, unique across threads and processes, valid for Alipay and WeChat Pay."""

from __future__ import annotations

import re
import secrets
import threading
import time

from elements.pays.errors import OrderIdInvalid

#: letters, digits and underscore, 6 to 32 characters: valid ``out_trade_no`` for both providers
ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_]{6,32}$")

_lock = threading.Lock()
_last_micros = 0
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def new_order_id() -> str:
    """A new order id: 20 digits of UTC time to the microsecond (strictly increasing within a process) followed by
    8 random base32 characters (so two processes in the same microsecond still differ), 28 characters in all."""
    global _last_micros
    with _lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    seconds, fraction = divmod(micros, 1_000_000)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(seconds)) + f"{fraction:06d}"
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return stamp + suffix


def check_order_id(order_id: str) -> str:
    """``order_id`` if it is valid for both providers, else ORDER_ID_INVALID."""
    if not isinstance(order_id, str) or not ORDER_ID_RE.match(order_id):
        raise OrderIdInvalid("orderId must be 6 to 32 letters, digits or underscores")
    return order_id
