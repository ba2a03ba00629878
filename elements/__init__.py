"""The official JitPay element library: one folder per fullName (``elements/pays/services/PaySvc/``)."""
