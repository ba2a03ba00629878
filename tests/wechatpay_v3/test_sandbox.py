"""The WeChat Pay v3 sandbox, checked with an independent client (``wechatpayv3``): it verifies request signatures
and refuses bad ones, signs its answers and callbacks in both key modes, encrypts callback resources and platform
certificates, keeps trades and refunds, retries callbacks until acknowledged, and has a wallet page; ``jit-sandbox
init`` makes its keys."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jitpay_sandbox.wechat_v3 import KEY_FILES, generate_wechat_v3_keys

from tests.support.live import wait_for

from .sandbox_support import APP_ID, MCH_ID, PUBLIC_KEY_ID, Harness, read

wechatpayv3 = pytest.importorskip("wechatpayv3")
from wechatpayv3 import WeChatPay, WeChatPayType  # noqa: E402
from wechatpayv3.core import Core  # noqa: E402


def client(h: Harness, mode: str | None = None, cert_dir: Path | None = None) -> WeChatPay:
    """A wechatpayv3 client of the sandbox merchant (``mode``: the harness's)."""
    mode = mode or h.mode
    public = mode in ("publicKey", "both")
    if not public:  # wechatpayv3 downloads certificates in its constructor from the real host: seed its cache
        assert cert_dir is not None
        cert_dir.mkdir(exist_ok=True)
        (cert_dir / "platform.pem").write_text(read(h.keys, "platformCertificate"))
    pay = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCH_ID, private_key=read(h.keys, "merchantPrivateKey"),
                    cert_serial_no=read(h.keys, "merchantSerialNo").strip(), appid=APP_ID,
                    apiv3_key=read(h.keys, "apiV3Key").strip(), notify_url=h.notify_url, timeout=5,
                    public_key=read(h.keys, "publicKey") if public else None,
                    public_key_id=PUBLIC_KEY_ID if public else None,
                    cert_dir=str(cert_dir) if cert_dir else None)
    pay._core._gate_way = h.gateway
    return pay


def core_for_callbacks(h: Harness, cert_dir: Path | None = None) -> Core:
    public = h.mode in ("publicKey", "both")
    if h.mode != "publicKey":
        assert cert_dir is not None
        cert_dir.mkdir(exist_ok=True)
        (cert_dir / "platform.pem").write_text(read(h.keys, "platformCertificate"))
    core = Core(mchid=MCH_ID, cert_serial_no=read(h.keys, "merchantSerialNo").strip(),
                private_key=read(h.keys, "merchantPrivateKey"), apiv3_key=read(h.keys, "apiV3Key").strip(),
                public_key=read(h.keys, "publicKey") if public else None,
                public_key_id=PUBLIC_KEY_ID if public else None, cert_dir=str(cert_dir) if cert_dir else None)
    core._gate_way = h.gateway  # certificates it does not know yet are downloaded from the sandbox
    return core


def order_no() -> str:
    return f"T{time.time_ns()}"[:32]


@pytest.mark.parametrize("mode", ["publicKey", "certificate"])
def test_an_independent_client_pays_queries_closes_and_refunds(harness_factory, tmp_path: Path, mode: str) -> None:
    h: Harness = harness_factory(mode)
    pay = client(h, cert_dir=tmp_path / "certs")  # wechatpayv3 raises if an answer's signature does not verify
    paid, unpaid = order_no(), order_no() + "U"
    code, message = pay.pay(description="沙箱 Sandbox", out_trade_no=paid, amount={"total": 1234}, attach="A1")
    assert code == 200 and json.loads(message)["code_url"].startswith(h.gateway + "/wallet/")
    code, message = pay.pay(description="沙箱 Sandbox", out_trade_no=unpaid, amount={"total": 100},
                            pay_type=WeChatPayType.H5,
                            scene_info={"payer_client_ip": "203.0.113.9", "h5_info": {"type": "Wap"}})
    assert code == 200 and "prepay_id=" in json.loads(message)["h5_url"]
    code, message = pay.query(out_trade_no=paid)
    assert code == 200 and json.loads(message)["trade_state"] == "NOTPAY"
    assert h.sandbox.pay(paid) and not h.sandbox.pay(paid)
    code, message = pay.query(out_trade_no=paid)
    answer = json.loads(message)
    assert (answer["trade_state"], answer["amount"]["total"], answer["attach"]) == ("SUCCESS", 1234, "A1")
    code, message = pay.query(transaction_id=answer["transaction_id"])
    assert code == 200 and json.loads(message)["out_trade_no"] == paid
    code, message = pay.close(unpaid)
    assert code == 204
    code, message = pay.close(unpaid)
    assert code == 400 and json.loads(message)["code"] == "ORDER_CLOSED"
    code, message = pay.close(paid)
    assert code == 400 and json.loads(message)["code"] == "ORDERPAID"
    code, message = pay.query(out_trade_no="NOSUCHORDER1")
    assert code == 404 and json.loads(message)["code"] == "ORDER_NOT_EXIST"
    code, message = pay.refund(out_refund_no="R-" + paid, amount={"refund": 234, "total": 1234, "currency": "CNY"},
                               transaction_id=answer["transaction_id"], notify_url=h.notify_url)
    assert code == 200 and json.loads(message)["status"] == "PROCESSING"
    code, message = pay.query_refund("R-" + paid)
    assert code == 200 and json.loads(message)["status"] == "SUCCESS"
    assert h.sandbox.refunded(paid) == __import__("decimal").Decimal("2.34")
    code, message = pay.refund(out_refund_no="R2-" + paid, amount={"refund": 1001, "total": 1234, "currency": "CNY"},
                               out_trade_no=paid)
    assert code == 400  # more than is left


def test_the_certificate_list_decrypts_with_wechatpayv3(harness_factory, tmp_path: Path) -> None:
    h: Harness = harness_factory("certificate")
    pay = client(h, cert_dir=tmp_path / "certs")
    serial = h.sandbox.rotate_platform_certificate()
    core = pay._core
    core._cert_dir = None
    core._update_certificates()  # GET /v3/certificates, each decrypted with the APIv3 key
    serials = sorted(format(c.serial_number, "X") for c in core._certificates)
    first = x509.load_pem_x509_certificate(read(h.keys, "platformCertificate").encode())
    assert serials == sorted([serial, format(first.serial_number, "X")])
    code, _ = pay.query(out_trade_no="NOSUCHORDER1")  # now signed by the rotated certificate, and verified
    assert code == 404


def test_a_public_key_merchant_has_no_certificates_to_download(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    code, message = client(h)._core.request("/v3/certificates")
    assert code == 404 and json.loads(message)["code"] == "RESOURCE_NOT_EXISTS"


@pytest.mark.parametrize("case", ["body", "serial", "stale", "mchid", "schema", "missing", "url"])
def test_requests_that_do_not_verify_are_refused(harness_factory, case: str) -> None:
    from wechatpayv3 import utils

    h: Harness = harness_factory("publicKey")
    key = utils.load_private_key(read(h.keys, "merchantPrivateKey"))
    serial, mchid = read(h.keys, "merchantSerialNo").strip(), MCH_ID
    body = json.dumps({"appid": APP_ID, "mchid": MCH_ID, "description": "x", "out_trade_no": order_no(),
                       "notify_url": h.notify_url, "amount": {"total": 1}})
    signed_body, signed_path = body, "/v3/pay/transactions/native"
    if case == "body":
        signed_body = body.replace('"total": 1', '"total": 2')
    elif case == "serial":
        serial = "1" + serial[1:] if serial[0] != "1" else "2" + serial[1:]
    elif case == "mchid":
        mchid = "1900000099"
    elif case == "url":
        signed_path = "/v3/pay/transactions/h5"
    header = utils.build_authorization(signed_path, "POST", mchid, serial, key, data=signed_body)
    if case == "stale":  # signed 301 seconds ago (the clock is shared with the sandbox: sign by hand)
        ts, nonce = str(int(time.time()) - 301), "N" * 32
        signature = utils.rsa_sign(key, f"POST\n{signed_path}\n{ts}\n{nonce}\n{signed_body}\n")
        header = (f'WECHATPAY2-SHA256-RSA2048 mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
                  f'timestamp="{ts}",serial_no="{serial}"')
    if case == "schema":
        header = header.replace("WECHATPAY2-SHA256-RSA2048", "WECHATPAY2-SHA256-RSA1024")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if case != "missing":
        headers["Authorization"] = header
    response = httpx.post(f"{h.gateway}/v3/pay/transactions/native", content=body, headers=headers)
    assert response.status_code == 401 and response.json()["code"] == "SIGN_ERROR", response.text
    assert h.sandbox.references() == []


def test_a_well_signed_request_with_bad_parameters_gets_a_signed_error(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    code, message = client(h).pay(description="x", out_trade_no="short", amount={"total": 1})
    assert code == 400 and json.loads(message)["code"] == "PARAM_ERROR"
    code, message = client(h).pay(description="x", out_trade_no=order_no(), amount={"total": 1}, appid="wx9")
    assert code == 400 and json.loads(message)["code"] == "APPID_MCHID_NOT_MATCH"


def test_a_repeated_order_with_other_parameters_is_refused(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    pay, no = client(h), order_no()
    first = pay.pay(description="x", out_trade_no=no, amount={"total": 1})
    assert pay.pay(description="x", out_trade_no=no, amount={"total": 1}) == first  # the same order again
    code, message = pay.pay(description="x", out_trade_no=no, amount={"total": 2})
    assert code == 400 and "商户订单号重复" in json.loads(message)["message"]


def test_time_expire_is_enforced(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    pay, no = client(h), order_no()
    soon = time.strftime("%Y-%m-%dT%H:%M:%S+08:00", time.gmtime(time.time() + 8 * 3600 + 1))
    assert pay.pay(description="x", out_trade_no=no, amount={"total": 1}, time_expire=soon)[0] == 200
    time.sleep(1.5)
    assert not h.sandbox.pay(no)
    assert json.loads(pay.query(out_trade_no=no)[1])["trade_state"] == "CLOSED"
    code, message = pay.pay(description="x", out_trade_no=order_no(), amount={"total": 1},
                            time_expire="2026-11-27 12:00:00")
    assert code == 400 and "rfc3339" in json.loads(message)["message"]


@pytest.mark.parametrize("mode", ["publicKey", "certificate", "both"])
def test_callbacks_are_signed_encrypted_and_retried_until_acknowledged(harness_factory, tmp_path: Path,
                                                                       mode: str) -> None:
    h: Harness = harness_factory(mode)
    h.replies = [500, 400]  # the merchant is not ready twice, then answers 204
    no = order_no()
    client(h, cert_dir=tmp_path / "certs").pay(description="回调 Callback", out_trade_no=no, amount={"total": 4321},
                                               attach="ORDER1")
    assert h.sandbox.pay(no)
    callbacks = h.wait_callbacks(3)
    time.sleep(0.3)
    assert len(h.callbacks()) == 3  # acknowledged: no more
    core = core_for_callbacks(h, tmp_path / "callback-certs")
    serials = set()
    for cb in callbacks:
        decoded = core.callback(cb.headers, cb.body)  # verified and decrypted by an independent implementation
        assert decoded["event_type"] == "TRANSACTION.SUCCESS" and decoded["resource_type"] == "encrypt-resource"
        assert decoded["resource"]["out_trade_no"] == no and decoded["resource"]["amount"]["total"] == 4321
        assert decoded["resource"]["attach"] == "ORDER1" and decoded["resource"]["trade_state"] == "SUCCESS"
        serials.add(cb.headers["wechatpay-serial"])
    stamps = [cb.headers["wechatpay-nonce"] for cb in callbacks]
    assert len(set(stamps)) == 3  # signed afresh for each attempt
    attempts = wait_for(lambda: (a := h.sandbox.trade(no)["notify_attempts"]) and a[-1]["ok"] and a)
    assert [a["ok"] for a in attempts] == [False, False, True] and [a["status"] for a in attempts] == [500, 400, 204]
    if mode == "both":  # a migration: callbacks come signed by either key
        platform = x509.load_pem_x509_certificate(read(h.keys, "platformCertificate").encode())
        assert serials == {PUBLIC_KEY_ID, format(platform.serial_number, "X")}
    else:
        assert len(serials) == 1 and (PUBLIC_KEY_ID in serials) == (mode == "publicKey")


def test_refund_callbacks(harness_factory, tmp_path: Path) -> None:
    h: Harness = harness_factory("publicKey")
    pay, no = client(h), order_no()
    pay.pay(description="x", out_trade_no=no, amount={"total": 500})
    h.sandbox.pay(no)
    h.wait_callbacks(1)
    pay.refund(out_refund_no="RF" + no, amount={"refund": 500, "total": 500, "currency": "CNY"}, out_trade_no=no,
               notify_url=h.notify_url)
    decoded = core_for_callbacks(h).callback(h.wait_callbacks(2)[1].headers, h.callbacks()[1].body)
    assert decoded["event_type"] == "REFUND.SUCCESS"
    assert decoded["resource"]["refund_status"] == "SUCCESS" and decoded["resource"]["amount"]["refund"] == 500
    assert h.sandbox.trade(no)["state"] == "REFUND"


def test_held_callbacks_and_made_up_ones(harness_factory) -> None:
    h: Harness = harness_factory("publicKey", notifyMode="hold")
    no = order_no()
    client(h).pay(description="x", out_trade_no=no, amount={"total": 1})
    h.sandbox.pay(no)
    (held,) = h.sandbox.take_notifications()
    assert held.event == "TRANSACTION.SUCCESS" and held.url == h.notify_url and h.callbacks() == []
    assert held.deliver().status_code == 204
    replay = h.sandbox.callback(no, timestamp=int(time.time()) - 360)
    assert int(replay.headers["Wechatpay-Timestamp"]) < time.time() - 300
    assert core_for_callbacks(h).callback(replay.headers, replay.body) is not None  # wechatpayv3 checks no time


def test_the_wallet_page_pays(harness_factory) -> None:
    h: Harness = harness_factory("publicKey")
    no = order_no()
    url = json.loads(client(h).pay(description="钱包 Wallet", out_trade_no=no, amount={"total": 9999})[1])["code_url"]
    page = httpx.get(url)
    assert page.status_code == 200 and "99.99" in page.text and "钱包 Wallet" in page.text
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))
    paid = httpx.post(h.url + action, follow_redirects=True)
    assert paid.status_code == 200 and 'data-state="SUCCESS"' in paid.text
    assert h.sandbox.trade(no)["state"] == "SUCCESS"
    assert httpx.get(f"{h.gateway}/wallet/nosuchtoken").status_code == 404


def test_jit_sandbox_init_writes_matching_v3_keys(tmp_path: Path) -> None:
    target = tmp_path / "keys"
    script = Path(sys.executable).parent / "jit-sandbox"
    first = subprocess.run([str(script), "init", str(target)], capture_output=True, text=True, timeout=120, check=True)
    for name in KEY_FILES.values():
        assert f"created {target / name}" in first.stdout
    second = subprocess.run([str(script), "init", str(target)], capture_output=True, text=True, timeout=120,
                            check=True)
    assert "created" not in second.stdout
    for name in ("merchantPrivateKey", "publicKeyPrivateKey", "platformPrivateKey", "apiV3Key"):
        assert (target / KEY_FILES[name]).stat().st_mode & 0o077 == 0
    merchant = serialization.load_pem_private_key(read(target, "merchantPrivateKey").encode(), None)
    cert = x509.load_pem_x509_certificate(read(target, "merchantCertificate").encode())
    assert cert.public_key().public_numbers() == merchant.public_key().public_numbers()
    assert read(target, "merchantSerialNo").strip() == format(cert.serial_number, "X")
    public = serialization.load_pem_public_key(read(target, "publicKey").encode())
    pair = serialization.load_pem_private_key(read(target, "publicKeyPrivateKey").encode(), None)
    assert public.public_numbers() == pair.public_key().public_numbers()
    assert len(read(target, "apiV3Key").strip()) == 32
    # a lost derived file is made again from the key that is kept
    (target / KEY_FILES["merchantSerialNo"]).unlink()
    generate_wechat_v3_keys(target)
    assert read(target, "merchantSerialNo").strip() == format(cert.serial_number, "X")
