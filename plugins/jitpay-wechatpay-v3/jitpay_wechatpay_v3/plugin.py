"""The distribution's jitcore plugin (entry point group ``jitcore``, name ``wechatpay_v3``): it contributes the element
folder that defines ``pays.WechatPayV3Type``. Nothing else: the element does its work through the provider contract
(``pays.Meta``), and PaySvc's generic route ``/api/{appId}/pays/services/PaySvc/notify/wechatv3`` takes its
callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jitcore import hookimpl


@hookimpl
def jit_element_dirs(app: Any) -> list[Path]:
    """The folder holding ``pays/WechatPayV3Type/``."""
    return [Path(__file__).parent / "elements"]
