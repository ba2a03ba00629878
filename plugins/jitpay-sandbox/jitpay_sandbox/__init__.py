"""jitpay-sandbox: local, faithful simulators of the Alipay and WeChat Pay gateways for JitPay.

Installed, it registers itself with jitcore (entry point group ``jitcore``, name ``sandbox``) and
mounts its gateways in every app whose YAML has a ``settings.sandbox`` block. ``jit-sandbox init
DIR`` writes the keys both sides need.
"""

__version__ = "0.1.0"
