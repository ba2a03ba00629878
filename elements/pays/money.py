"""Money: Decimal yuan in, integer fen stored, two places out. Never a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from elements.pays.errors import AmountInvalid

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("100000000.00")


def parse_amount(value: object, what: str = "amount") -> Decimal:
    """A valid amount as Decimal yuan with two places: finite, > 0, at most two decimal places, at most
    100000000.00. Floats are read through ``str`` (``99.99`` stays ``99.99``). Anything else is AMOUNT_INVALID."""
    if isinstance(value, bool):
        raise AmountInvalid(f"{what} must be a number, not a boolean")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise AmountInvalid(f"{what} is not a number") from None
    if not amount.is_finite():
        raise AmountInvalid(f"{what} must be a finite number")
    if amount <= 0:
        raise AmountInvalid(f"{what} must be greater than 0")
    if amount > MAX_AMOUNT:
        raise AmountInvalid(f"{what} must be at most {MAX_AMOUNT}")
    quantized = amount.quantize(CENT)
    if quantized != amount:
        raise AmountInvalid(f"{what} has more than two decimal places")
    return quantized


def to_fen(amount: Decimal) -> int:
    """Decimal yuan (two places) to integer fen, exactly."""
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise AmountInvalid("amount has more than two decimal places")
    return int(fen)


def from_fen(fen: int) -> Decimal:
    """Integer fen to Decimal yuan with two places."""
    return (Decimal(fen) / 100).quantize(CENT)
