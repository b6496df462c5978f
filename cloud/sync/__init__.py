"""Gateway sync, the cloud side (docs/protocol.md section 6): enrollment, the mutual-TLS sync
listener, batch intake under the delivery contract, the downlink queue, certificate renewal."""
