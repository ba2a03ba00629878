"""AcmePay for JitPay: a payment provider plugin for a made-up provider with a JSON API and HMAC-signed webhooks.

- :mod:`acmepay.plugin`: the jitcore plugin (entry point ``acmepay``): the element folder, and a return page mounted
  only in apps that configure an AcmePay element;
- ``acmepay/elements/acmepay/AcmePayType``: the provider (``pays.Meta`` contract);
- :mod:`acmepay.protocol`: what the provider and its gateway agree on (signatures, statuses, amounts);
- :mod:`acmepay.fake`: a fake AcmePay gateway to test against, served in-process over loopback.
"""
