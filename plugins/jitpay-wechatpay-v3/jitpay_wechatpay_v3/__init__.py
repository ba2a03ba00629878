"""jitpay-wechatpay-v3: WeChat Pay API v3 for JitPay, as the element ``pays.WechatPayV3Type``.

Installed, the distribution registers itself with jitcore (entry point group ``jitcore``, name ``wechatpay_v3``) and
contributes the element; an app uses it by configuring ``pays.WechatPayV3Type`` (or an instance of that type) in its
YAML. It speaks to PaySvc only through the provider contract of ``pays.Meta``. See README.md.
"""

__version__ = "0.1.0"
