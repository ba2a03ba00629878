"""Element folder of acme-elements (importable so element code is a normal package)."""
