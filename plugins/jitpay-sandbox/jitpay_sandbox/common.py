"""What the Alipay, WeChat Pay v2 and WeChat Pay v3 simulators share, so each of their modules holds only its protocol.

- :class:`SandboxBase`: the trade registry (by ``out_trade_no`` and by wallet token), the lock guarding it, held
  notifications (``notifyMode: hold``) and the Python API tests use (:meth:`~SandboxBase.pay`,
  :meth:`~SandboxBase.captured`, :meth:`~SandboxBase.refunded`, :meth:`~SandboxBase.references`,
  :meth:`~SandboxBase.held_notifications`, :meth:`~SandboxBase.take_notifications`, :attr:`~SandboxBase.notify_mode`).
- :class:`WechatWalletSandbox`: the WeChat wallet page (``wallet/{token}`` with its Pay and Fail buttons) and
  :meth:`~WechatWalletSandbox.fail`, for both WeChat Pay simulators; their pages extend
  ``templates/wechat_wallet_base.html``.
- Reading settings (:func:`sandbox_block`, :func:`required_text`, :func:`read_numbers`, :func:`read_notify_mode`),
  mounting a sandbox (:func:`mount`), and small helpers (key files, fen to yuan, request bodies with a size limit).
"""

from __future__ import annotations

import os
import secrets
import string
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from jitcore.errors import ConfigError

from .held import NOTIFY_MODES, HeldNotification
from .registry import register

__all__ = ["BEIJING", "ALNUM", "SandboxBase", "WechatWalletSandbox", "sandbox_block", "required_text", "read_numbers",
           "read_notify_mode", "mount", "templates", "write_new", "digits", "yuan", "read_limited"]

#: China Standard Time, the providers' clock
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
ALNUM = string.ascii_letters + string.digits
TEMPLATE_DIR = Path(__file__).parent / "templates"
_TEMPLATES = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(["html"]))
_STRICT_TEMPLATES = Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(["html"]),
                                undefined=StrictUndefined)


# -- small helpers ----------------------------------------------------------------------------------------------------
def templates(*, strict: bool = False) -> Environment:
    """The Jinja environment of the sandbox's ``templates/`` folder (HTML autoescaped); ``strict``: an undefined
    variable is an error instead of empty."""
    return _STRICT_TEMPLATES if strict else _TEMPLATES


def write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` and ``mode``; False (nothing written) if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have narrowed it; never widened beyond `mode`
    return True


def digits(n: int) -> str:
    """``n`` random decimal digits (ids such as WeChat's ``transaction_id``)."""
    return "".join(secrets.choice(string.digits) for _ in range(n))


def yuan(fen: int) -> Decimal:
    """Fen (WeChat Pay's unit) as yuan with two decimals."""
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


async def read_limited(request: Request, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The request body, refused with ``too_large()`` (raised) once it is, or declares itself, over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


# -- settings -----------------------------------------------------------------------------------------------------------
def sandbox_block(app: Any, name: str) -> Any:
    """``app.settings["sandbox"][name]`` (the settings of one simulator), or ``None`` when there is none."""
    return ((getattr(app, "settings", None) or {}).get("sandbox") or {}).get(name)


def required_text(raw: Mapping[str, Any], where: str, key: str) -> str:
    """The setting ``key`` of the block at ``where``, stripped; ``ConfigError`` when it is missing or blank."""
    value = raw.get(key)
    if value is None or str(value).strip() == "":
        raise ConfigError(f"{where}.{key} is required", details={"key": f"{where}.{key}"})
    return str(value).strip()


def _and(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def read_numbers(raw: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The seconds settings present in ``raw``: each of ``keys`` as a float and ``notifyRetryDelays`` as a tuple of
    floats; ``ConfigError`` (naming them all) when one is not a number."""
    values: dict[str, Any] = {}
    try:
        for key in keys:
            if key in raw:
                values[key] = float(raw[key])
        if "notifyRetryDelays" in raw:
            values["notifyRetryDelays"] = tuple(float(d) for d in raw["notifyRetryDelays"])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {_and(keys)} must be numbers, notifyRetryDelays a list of numbers "
                          f"(seconds)") from None
    return values


def read_notify_mode(raw: Mapping[str, Any], where: str, default: str = "send") -> str:
    """The ``notifyMode`` setting (one of :data:`~jitpay_sandbox.held.NOTIFY_MODES`), ``default`` when absent."""
    mode = raw.get("notifyMode", default)
    if mode not in NOTIFY_MODES:
        raise ConfigError(f"{where}.notifyMode must be one of {', '.join(NOTIFY_MODES)}")
    return mode


def mount(app: Any, name: str, build: Callable[[Any], "SandboxBase"]) -> list[BaseRoute]:
    """The routes of a fresh sandbox for ``app``: ``build(settings)`` makes it from ``app.settings["sandbox"][name]``
    and it is registered as ``jitpay_sandbox.sandbox_of(app, name)``; no routes when that block is absent or empty."""
    settings = sandbox_block(app, name)
    if not settings:
        return []
    sandbox = build(settings)
    register(app, name, sandbox)
    return sandbox.routes()


# -- the simulators' common core ------------------------------------------------------------------------------------------
class SandboxBase:
    """The part of a simulator that does not depend on its protocol: its trades in memory (``_trades`` by
    ``out_trade_no``, ``_by_token`` from wallet token to ``out_trade_no``; every trade object has ``out_trade_no``
    and ``token``), the re-entrant lock guarding them, held notifications and the thread-safe Python API for tests.

    A subclass sets :attr:`provider`, and implements :meth:`routes`, :meth:`_complete` (the buyer pays, or the
    payment fails), :meth:`_captured_amount` and :meth:`_refunded_amount`."""

    #: the name in :attr:`HeldNotification.provider` and for ``jitpay_sandbox.sandbox_of``
    provider: ClassVar[str] = ""

    def __init__(self, *, notify_mode: str = "send") -> None:
        self._lock = threading.RLock()
        self._trades: dict[str, Any] = {}
        self._by_token: dict[str, str] = {}
        self._held: list[HeldNotification] = []
        self.notify_mode = notify_mode

    def routes(self) -> list[BaseRoute]:  # pragma: no cover - every simulator has its own
        """The Starlette routes of this sandbox."""
        raise NotImplementedError

    # -- the Python API for tests ----------------------------------------------------------------------------------
    @property
    def notify_mode(self) -> str:
        """``"send"`` (post notifications and retry them) or ``"hold"`` (keep them, see :meth:`take_notifications`).
        Settable at any time; it applies to notifications made afterwards."""
        return self._notify_mode

    @notify_mode.setter
    def notify_mode(self, mode: str) -> None:
        if mode not in NOTIFY_MODES:
            raise ValueError(f"notify_mode must be one of {', '.join(NOTIFY_MODES)}, not {mode!r}")
        with self._lock:
            self._notify_mode = mode

    def references(self) -> list[str]:
        """The ``out_trade_no`` of every trade the sandbox holds, in creation order."""
        with self._lock:
            return list(self._trades)

    def pay(self, reference: str) -> bool:
        """Pay the trade ``reference`` (its ``out_trade_no``) as the wallet's Pay button does, then notify (or hold
        the notification). True when this call paid it; False when it cannot be paid (expired, closed, paid or failed
        already). ``KeyError`` for a trade the sandbox never saw."""
        return self._complete_by_reference(reference, paid=True)

    def captured(self, reference: str) -> Decimal:
        """Yuan the buyer paid into the trade ``reference`` (its amount once paid, also after refunds; ``0.00`` when
        unpaid or unknown)."""
        with self._lock:
            trade = self._trades.get(reference)
            return self._captured_amount(trade) if trade is not None else Decimal("0.00")

    def refunded(self, reference: str) -> Decimal:
        """Yuan refunded from the trade ``reference`` so far (``0.00`` when none or unknown)."""
        with self._lock:
            trade = self._trades.get(reference)
            return self._refunded_amount(trade) if trade is not None else Decimal("0.00")

    def held_notifications(self) -> list[HeldNotification]:
        """The notifications held so far (``notifyMode: hold``), oldest first; they stay held."""
        with self._lock:
            return list(self._held)

    def take_notifications(self) -> list[HeldNotification]:
        """The notifications held so far, oldest first, removing them from the sandbox."""
        with self._lock:
            held, self._held = self._held, []
            return held

    # -- for the simulators ----------------------------------------------------------------------------------------
    def _add_trade(self, trade: Any) -> None:
        """Keep a new trade, findable by ``out_trade_no`` and by wallet token (the caller holds the lock)."""
        self._trades[trade.out_trade_no] = trade
        self._by_token[trade.token] = trade.out_trade_no

    def _trade_for_token(self, token: str) -> Any | None:
        """The trade whose wallet page is ``token``, or None (the caller holds the lock)."""
        out_trade_no = self._by_token.get(token)
        return self._trades.get(out_trade_no) if out_trade_no else None

    def _complete_by_reference(self, reference: str, *, paid: bool) -> bool:
        """:meth:`_complete` the trade ``reference``; ``KeyError`` when the sandbox never saw it."""
        with self._lock:
            trade = self._trades.get(reference)
            if trade is None:
                raise KeyError(reference)
            return self._complete(trade, paid)

    def _hold(self, reference: str, event: str, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Keep a notification instead of posting it (``notifyMode: hold``; the caller holds the lock)."""
        self._held.append(self._held_notification(reference, event, url, body, headers))

    def _held_notification(self, reference: str, event: str, url: str, body: bytes,
                           headers: Mapping[str, str]) -> HeldNotification:
        """A notification of this sandbox, made now, as :meth:`held_notifications` lists it."""
        return HeldNotification(provider=self.provider, reference=reference, event=event, url=url, body=body,
                                headers=dict(headers), at=datetime.now(BEIJING))

    def _complete(self, trade: Any, paid: bool) -> bool:  # pragma: no cover - every simulator has its own
        """The buyer pays (``paid``) or the payment fails; False when the trade is not payable (the caller holds the
        lock)."""
        raise NotImplementedError

    def _captured_amount(self, trade: Any) -> Decimal:  # pragma: no cover - every simulator has its own
        """Yuan paid into ``trade`` (``0.00`` when unpaid; the caller holds the lock)."""
        raise NotImplementedError

    def _refunded_amount(self, trade: Any) -> Decimal:  # pragma: no cover - every simulator has its own
        """Yuan refunded from ``trade`` so far (the caller holds the lock)."""
        raise NotImplementedError


class WechatWalletSandbox(SandboxBase):
    """A WeChat Pay simulator's wallet, in place of the WeChat app: the page ``{prefix}/wallet/{token}`` (the
    ``code_url`` / ``mweb_url`` / ``h5_url`` handed out) with a Pay and a Fail button, and :meth:`fail`.

    A subclass sets :attr:`prefix`, :attr:`wallet_route_name` and :attr:`wallet_template` (a template extending
    ``wechat_wallet_base.html``) and implements :meth:`_expire` and :meth:`_wallet_view`."""

    #: the path the simulator is mounted below
    prefix: ClassVar[str] = ""
    #: the name of the wallet page's route
    wallet_route_name: ClassVar[str] = ""
    #: the wallet page's template
    wallet_template: ClassVar[str] = ""

    def fail(self, reference: str) -> bool:
        """Make the payment of ``reference`` fail as the wallet's "Fail" button does: the order becomes
        ``PAYERROR`` (v2 sends, or holds, a ``result_code=FAIL`` notification; v3 sends no callback for that). True
        when this call failed it; False when it was not payable; ``KeyError`` for an order the sandbox never saw."""
        return self._complete_by_reference(reference, paid=False)

    #: while set, a new refund stays ``PROCESSING`` until :meth:`finish_refund` ends it (else it succeeds at once)
    refunds_wait: bool = False

    def finish_refund(self, out_refund_no: str, outcome: str = "SUCCESS") -> bool:
        """End a refund that is ``PROCESSING`` (made while :attr:`refunds_wait` was set), as WeChat Pay does later:
        ``SUCCESS`` (refunded), ``CLOSED`` (WeChat Pay gave up: nothing was refunded, the amount is refundable
        again; v2 says ``REFUNDCLOSE``) or ``ABNORMAL`` (the buyer's account could not take it: not refunded; v2
        says ``CHANGE``). An ``ABNORMAL`` refund can still become ``SUCCESS`` (the merchant handled it in the
        merchant platform). v3 sends the ``REFUND.*`` callback. True when this call changed the refund; False when
        it was final already; ``KeyError`` for a refund the sandbox never saw."""
        if outcome not in ("SUCCESS", "CLOSED", "ABNORMAL"):
            raise ValueError(f"a refund ends SUCCESS, CLOSED or ABNORMAL, not {outcome!r}")
        with self._lock:
            return self._finish_refund(out_refund_no, outcome)

    def processing_refunds(self) -> list[str]:
        """The ``out_refund_no`` of every refund still ``PROCESSING`` (or ``ABNORMAL``), oldest first."""
        with self._lock:
            return self._unfinished_refunds()

    def _finish_refund(self, out_refund_no: str, outcome: str) -> bool:  # pragma: no cover - each has its own
        """:meth:`finish_refund` with the lock held."""
        raise NotImplementedError

    def _unfinished_refunds(self) -> list[str]:  # pragma: no cover - each has its own
        """:meth:`processing_refunds` with the lock held."""
        raise NotImplementedError

    def _wallet_routes(self) -> list[BaseRoute]:
        """The wallet page and its two buttons."""
        return [
            Route(f"{self.prefix}/wallet/{{token}}", self._wallet_page, methods=["GET"], name=self.wallet_route_name),
            Route(f"{self.prefix}/wallet/{{token}}/pay", self._wallet_pay, methods=["POST"]),
            Route(f"{self.prefix}/wallet/{{token}}/fail", self._wallet_fail, methods=["POST"]),
        ]

    def _wallet_url(self, request: Request, trade: Any) -> str:
        """The absolute URL of ``trade``'s wallet page, on the base URL ``request`` came in on."""
        return f"{str(request.base_url).rstrip('/')}{self.prefix}/wallet/{trade.token}"

    async def _wallet_page(self, request: Request) -> Response:
        template = templates().get_template(self.wallet_template)
        with self._lock:
            trade = self._trade_for_token(request.path_params["token"])
            if trade is None:
                return HTMLResponse(template.render(trade=None), status_code=404)
            self._expire(trade)
            view = self._wallet_view(trade)
            token = trade.token
        return HTMLResponse(template.render(trade=view, pay_action=f"{self.prefix}/wallet/{token}/pay",
                                            fail_action=f"{self.prefix}/wallet/{token}/fail"))

    async def _wallet_pay(self, request: Request) -> Response:
        return self._settle(request, paid=True)

    async def _wallet_fail(self, request: Request) -> Response:
        return self._settle(request, paid=False)

    def _settle(self, request: Request, *, paid: bool) -> Response:
        token = request.path_params["token"]
        with self._lock:
            trade = self._trade_for_token(token)
            if trade is None:
                return HTMLResponse("unknown trade / 订单不存在", status_code=404)
            # Paying twice or paying a closed trade changes nothing; the page shows the state.
            self._complete(trade, paid)
        return RedirectResponse(f"{request.base_url}{self.prefix.lstrip('/')}/wallet/{token}", status_code=303)

    def _expire(self, trade: Any) -> None:  # pragma: no cover - every simulator has its own
        """Close ``trade`` if it is unpaid and past its expiry (the caller holds the lock)."""
        raise NotImplementedError

    def _wallet_view(self, trade: Any) -> dict[str, Any]:  # pragma: no cover - every simulator has its own
        """What ``wechat_wallet_base.html`` shows of ``trade`` (the caller holds the lock): ``out_trade_no``,
        ``subject``, ``amount``, ``trade_type``, ``attach``, ``state``, ``mch_id``, ``transaction_id``, ``attempts``,
        ``payable``, ``notifies`` (a notification goes out in this state), ``expires``."""
        raise NotImplementedError
