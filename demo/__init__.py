"""The demo shop: an app plugin of ``app.example.yaml`` showing how an app hooks into JitPay."""
