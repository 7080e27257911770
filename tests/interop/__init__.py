"""Real exporters (softflowd, pmacctd), the reference collector (nfcapd) and vendor packets."""
