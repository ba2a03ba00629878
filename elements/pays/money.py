"""Money: Decimal yuan in, integer fen stored, two places out. Never a float.

Part of the provider contract (docs/PROVIDERS.md): a provider plugin may use :func:`yuan_to_fen` and
:func:`from_fen` for a wire format in integer fen (WeChat Pay's)."""

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


def yuan_to_fen(amount: Decimal) -> int:
    """An order's ``Decimal`` yuan → integer fen for the wire, exactly. :class:`AmountInvalid` for fractions of a
    fen, non-positive or non-finite amounts, and for floats and booleans (money never goes through binary floating
    point here); ``int`` and ``str`` are read as ``Decimal``."""
    if isinstance(amount, (float, bool)) or not isinstance(amount, (Decimal, int, str)):
        raise AmountInvalid(f"amount must be a Decimal number of yuan, not {type(amount).__name__}")
    try:
        value = Decimal(amount)
        fen = value * 100
        if not value.is_finite() or fen != fen.to_integral_value():
            raise AmountInvalid(f"amount {amount} is not a whole number of fen (at most two decimal places)")
    except InvalidOperation:
        raise AmountInvalid(f"amount {amount!r} is not a number") from None
    if fen <= 0:
        raise AmountInvalid(f"amount {amount} must be at least 0.01 yuan")
    return int(fen)


def from_fen(fen: int) -> Decimal:
    """Integer fen to Decimal yuan with two places."""
    return (Decimal(fen) / 100).quantize(CENT)


def captured_fen(amount: Decimal | None) -> int | None:
    """What a provider reports captured, in integer fen; None when it reports no amount or one that is not a valid
    amount (:func:`parse_amount`)."""
    if amount is None:
        return None
    try:
        return to_fen(parse_amount(amount, "captured amount"))
    except AmountInvalid:
        return None
