"""docs/PROVIDERS.md's worked example is the AcmePay distribution as it is (tests/plugins/jitpay-acmepay), file for
file, so that the page stays enough on its own to write a provider. Run this module as a script to rewrite the
example from the files after changing them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "PROVIDERS.md"
ACME = Path("tests/plugins/jitpay-acmepay")
FILES = ["pyproject.toml", "acmepay/plugin.py", "acmepay/protocol.py",
         "acmepay/elements/acmepay/AcmePayType/e.yaml", "acmepay/elements/acmepay/AcmePayType/__init__.py",
         "tests/test_acmepay_conformance.py"]
MARK = "## Worked example: AcmePay"
LANGUAGES = {".py": "python", ".toml": "toml", ".yaml": "yaml"}


def example() -> str:
    """The example's file blocks."""
    blocks = []
    for name in FILES:
        path = ACME / name
        text = (REPO / path).read_text(encoding="utf-8").rstrip("\n")
        blocks.append(f"`{path}`:\n\n```{LANGUAGES[path.suffix]}\n{text}\n```\n")
    blocks.append(f"The fake gateway, `{ACME / 'acmepay/fake.py'}`, is a Starlette app over the same protocol with "
                  f"a Python API for tests (`pay`, `fail`, `take_notifications`, `captured`, `refunded`, `down`).\n")
    return "\n".join(blocks)


def split(doc: str) -> tuple[str, str]:
    """(the page up to the example's first file, the example from there)."""
    start = doc.index(f"`{ACME}/", doc.index(MARK))
    return doc[:start], doc[start:]


def test_the_worked_example_is_the_acmepay_distribution() -> None:
    head, current = split(DOC.read_text(encoding="utf-8"))
    assert current == example(), f"docs/PROVIDERS.md is out of date: run python {Path(__file__).relative_to(REPO)}"


def test_every_contract_method_is_documented() -> None:
    from elements.pays.Meta import NotifyReply, NotifyRequest, OrderView, PaymentPrep, PayProvider, RefundResult, \
        TradeState

    doc = DOC.read_text(encoding="utf-8")
    methods = [name for name, value in vars(PayProvider).items() if callable(value) and not name.startswith("_")
               and name not in ("qr_data_uri",)]
    for name in methods + ["providerName", "payTypes", "notifyPath", "notifyMaxBytes", "outcomeUnknown"]:
        assert f"`{name}" in doc, name
    for cls in (OrderView, PaymentPrep, TradeState, RefundResult, NotifyRequest, NotifyReply):
        assert f"`{cls.__name__}`" in doc
        for field in getattr(cls, "__dataclass_fields__", {}):
            assert f"`{field}`" in doc, (cls.__name__, field)
    for status in ("pending", "success", "refunded", "failed", "closed"):
        assert re.search(rf"^\| `{status}` \|", doc, re.MULTILINE), status


if __name__ == "__main__":
    head, _ = split(DOC.read_text(encoding="utf-8"))
    DOC.write_text(head + example(), encoding="utf-8")
    sys.exit(0)
