"""Pulse gateway agent: local broker, store-and-forward buffer, local rules, sync to the cloud."""
