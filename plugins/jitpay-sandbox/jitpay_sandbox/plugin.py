"""The sandbox's jitcore plugin: mounts the simulated gateways into an app's HTTP face."""

from __future__ import annotations

from jitcore import hookimpl


@hookimpl
def jit_routes(app):
    """Routes of the Alipay (``/sandbox/alipay/``), WeChat Pay v2 (``/sandbox/wechat/``) and WeChat Pay v3
    (``/sandbox/wechatpay-v3/``) sandboxes, each only where its ``settings.sandbox`` block is.

    Only for apps that configure ``settings.sandbox``; any other app gets no routes, so merely having
    the distribution installed never exposes a fake gateway.
    """
    if "sandbox" not in (app.settings or {}):
        return []
    # Imported here so apps without a sandbox never load the simulators.
    from jitpay_sandbox.alipay import alipay_routes
    from jitpay_sandbox.wechat import wechat_routes
    from jitpay_sandbox.wechat_v3 import wechat_v3_routes

    return [*alipay_routes(app), *wechat_routes(app), *wechat_v3_routes(app)]
