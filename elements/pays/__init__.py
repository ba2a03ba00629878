"""The payment library: ``pays.Meta`` (the provider contract), the Alipay and WeChat Pay providers, and
``pays.services.PaySvc``."""
