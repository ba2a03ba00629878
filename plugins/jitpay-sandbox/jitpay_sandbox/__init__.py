"""jitpay-sandbox: local, faithful simulators of the Alipay and WeChat Pay gateways for JitPay.

Installed, it registers itself with jitcore (entry point group ``jitcore``, name ``sandbox``) and
mounts its gateways in every app whose YAML has a ``settings.sandbox`` block. ``jit-sandbox init
DIR`` writes the keys both sides need. Tests reach the sandbox objects serving an app with
:func:`sandbox_of`.
"""

from .registry import sandbox_of

__all__ = ["sandbox_of"]
__version__ = "0.1.0"
