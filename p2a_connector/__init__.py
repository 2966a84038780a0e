"""p2a-connector: SMPP deliver_sm in, signed webhooks out."""

__version__ = "0.1.0"
