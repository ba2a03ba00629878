"""The ``req_info`` of a WeChat Pay v2 refund notification ("退款结果通知").

A refund notification carries no signature. Its details are in ``req_info``: base64 of AES-256-ECB with PKCS#7
padding, keyed by the lower-case hex MD5 of the merchant's API key (32 ASCII characters, the 32 bytes of the key);
the plain text is a flat ``<root>`` of fields (``out_trade_no``, ``out_refund_no``, ``transaction_id``,
``refund_status``, ...).

ECB without a MAC proves little: only that whoever wrote it knew the key, and blocks of one such text can be
rearranged into another. So a decrypted ``req_info`` is used to learn *which* trade and refund to ask WeChat Pay
about, never as the answer (see ``WechatPayType.verify_notify``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["ReqInfoInvalid", "decrypt_req_info", "encrypt_req_info"]

#: a refund notification's ``req_info`` is well under this (WeChat's holds about a dozen short fields)
MAX_REQ_INFO_CHARS = 16 * 1024


class ReqInfoInvalid(ValueError):
    """``req_info`` is not base64 of whole AES blocks that decrypt, with this key, to correctly padded UTF-8."""


def _cipher(api_key: str) -> Cipher:
    key = hashlib.md5(api_key.encode("utf-8")).hexdigest().encode("ascii")
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - WeChat Pay v2's scheme, see the module docstring


def decrypt_req_info(req_info: str, api_key: str) -> str:
    """The plain text (an XML document) of ``req_info`` under the merchant's ``api_key``. Raises
    :class:`ReqInfoInvalid` for anything that does not decrypt cleanly (not base64, not whole blocks, bad padding:
    another key, or not WeChat Pay's), and for a ``req_info`` over :data:`MAX_REQ_INFO_CHARS`."""
    if not isinstance(req_info, str) or not req_info or len(req_info) > MAX_REQ_INFO_CHARS:
        raise ReqInfoInvalid("req_info is empty or too long")
    try:
        sealed = base64.b64decode(req_info, validate=True)
    except (binascii.Error, ValueError):
        raise ReqInfoInvalid("req_info is not base64") from None
    if not sealed or len(sealed) % 16:
        raise ReqInfoInvalid("req_info is not whole AES blocks")
    decryptor = _cipher(api_key).decryptor()
    padded = decryptor.update(sealed) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except ValueError:  # bad padding or not UTF-8: another key, or not WeChat Pay's
        raise ReqInfoInvalid("req_info does not decrypt with this merchant's API key") from None


def encrypt_req_info(plain: bytes, api_key: str) -> str:
    """``plain`` (the ``<root>`` document) as WeChat Pay sends it in ``req_info``: for the sandbox and tests."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = _cipher(api_key).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")
