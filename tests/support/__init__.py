"""Helpers the tests share: paths and tools, pcap and datagram builders, real daemons,
a live ``sluice serve``, and the plain-Python reference models."""
