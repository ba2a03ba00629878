"""The sandbox's jitcore plugin: mounts the simulated gateways into an app's HTTP face."""

from __future__ import annotations

from jitcore import hookimpl


@hookimpl
def jit_routes(app):
    """Routes of the Alipay (``/sandbox/alipay/``) and WeChat Pay (``/sandbox/wechat/``) sandboxes.

    Only for apps that configure ``settings.sandbox``; any other app gets no routes, so merely having
    the distribution installed never exposes a fake gateway.
    """
    if "sandbox" not in (app.settings or {}):
        return []
    # Imported here so apps without a sandbox never load the simulators.
    from jitpay_sandbox.alipay import alipay_routes
    from jitpay_sandbox.wechat import wechat_routes

    return [*alipay_routes(app), *wechat_routes(app)]
