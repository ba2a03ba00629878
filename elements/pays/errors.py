"""The payment library's error codes. Each is a :class:`jitcore.errors.JitError` with a fitting HTTP status."""

from __future__ import annotations

from typing import Any

from jitcore.errors import JitError


class PayError(JitError):
    """Base of every payment error."""

    code = "PAY_ERROR"
    http_status = 400


class OrderNotExist(PayError):
    """No order has that orderId."""

    code = "ORDER_NOT_EXIST"
    http_status = 404


class UnknownPayType(PayError):
    """``fullName`` names no payment element (nothing whose type chain includes ``pays.Meta``)."""

    code = "UNKNOWN_PAY_TYPE"
    http_status = 400


class UnsupportedPayType(PayError):
    """The payment element does not offer that payType; the message lists those it does."""

    code = "UNSUPPORTED_PAY_TYPE"
    http_status = 400


class AmountInvalid(PayError):
    """Not an amount: not finite, not above 0, more than two decimal places, or over 100000000.00."""

    code = "AMOUNT_INVALID"
    http_status = 400


class OrderIdInvalid(PayError):
    """An orderId that is not 6 to 32 letters, digits or underscores (valid for both providers)."""

    code = "ORDER_ID_INVALID"
    http_status = 400


class SubjectInvalid(PayError):
    """An empty subject."""

    code = "SUBJECT_INVALID"
    http_status = 400


class DuplicateOrder(PayError):
    """The orderId exists with another subject or amount."""

    code = "DUPLICATE_ORDER"
    http_status = 409


class OrderPaid(PayError):
    """The order is paid (or refunded): it cannot be paid or closed again."""

    code = "ORDER_PAID"
    http_status = 409


class OrderClosed(PayError):
    """The order is closed: it cannot be paid."""

    code = "ORDER_CLOSED"
    http_status = 409


class OrderExpired(PayError):
    """The order's payment window (``settings.pays.payTimeoutMinutes`` after its creation) is over, or too little of
    it is left to offer a new trade."""

    code = "ORDER_EXPIRED"
    http_status = 409


class OrderStateConflict(PayError):
    """The order is not in a state that allows the operation (e.g. refunding an unpaid order)."""

    code = "ORDER_STATE_CONFLICT"
    http_status = 409


class AmountMismatch(PayError):
    """The provider reports a paid amount that differs from the order's: nothing changes, the report is recorded."""

    code = "AMOUNT_MISMATCH"
    http_status = 409


class RefundInvalid(PayError):
    """A refund that cannot be made: more than was paid, a reused refund id with another amount, ..."""

    code = "REFUND_INVALID"
    http_status = 409


class SignatureInvalid(PayError):
    """A notification or a provider response whose signature does not verify."""

    code = "SIGNATURE_INVALID"
    http_status = 400


class NotifyInvalid(PayError):
    """A notification that verified (or could not be parsed) but does not match what we expect
    (wrong app id / merchant, unknown order, wrong amount, malformed body)."""

    code = "NOTIFY_INVALID"
    http_status = 400


class ProviderError(PayError):
    """The provider could not be reached, or answered with an error. Carries the provider's own code and message."""

    code = "PROVIDER_ERROR"
    http_status = 502

    def __init__(self, message: str, *, provider_code: str | None = None, provider_message: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        details = dict(details or {})
        if provider_code is not None:
            details["providerCode"] = provider_code
        if provider_message is not None:
            details["providerMessage"] = provider_message
        super().__init__(message, details=details)
        self.provider_code = provider_code
        self.provider_message = provider_message
