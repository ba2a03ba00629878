"""``services.NormalType``: services written as a Python class.

An instance element's folder exports a subclass of :class:`NormalService` under the element's short name; each method
that callers may use is declared in the element's ``functionList``::

    from elements.services.NormalType import NormalService

    class HelloSvc(NormalService):
        def hello(self, name: str) -> dict:
            return {"greeting": f"Hello, {name}!"}
"""

from elements.services.Meta import Meta


class NormalService(Meta):
    """Base class of ``services.NormalType`` instances. ``self.app``, ``self.config`` and ``self.define`` are set;
    override :meth:`jit_setup` to check the config at load."""


NormalType = NormalService
