"""The element folder of ``pays.WechatPayV3Type``: its class lives in :mod:`jitpay_wechatpay_v3.provider`."""

from jitpay_wechatpay_v3.provider import WechatPayV3Type

__all__ = ["WechatPayV3Type"]
