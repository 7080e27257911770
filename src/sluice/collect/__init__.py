"""Flow collection: UDP listeners and vectorised decoders for NetFlow v5/v9, IPFIX and sFlow v5."""
