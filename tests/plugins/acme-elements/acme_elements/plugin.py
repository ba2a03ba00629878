from pathlib import Path

from jitcore import hookimpl


@hookimpl
def jit_element_dirs(app):
    """The acme element folder."""
    return [Path(__file__).parent / "elements"]
