"""``services.Meta``: the root of the service family."""

from jitcore.element import Element


class Meta(Element):
    """Base of every service element."""
