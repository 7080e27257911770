"""softflowd (Debian) exports a generated pcap as NetFlow v5, v9 and IPFIX; the same
datagrams go to Sluice and to nfcapd. Per 5-tuple totals must agree three ways: Sluice,
nfdump, and the pcap's own ground truth."""

import pytest

from .conftest import require_tool
from .interop import SluiceCollector, UdpTee, icmp_portless, nfcapd, nfdump_totals, run, sluice_totals
from .pcapgen import expected_flows, standard_conversations, write_pcap

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("version", ["5", "9", "10"])
def test_softflowd_export_matches_nfcapd_and_pcap(tmp_path, version):
    softflowd = require_tool("softflowd")
    # softflowd keeps only ~16 characters of the -r path (an interface-name buffer): run it in
    # the capture's directory with a short relative name
    packets = write_pcap(tmp_path / "t.pcap", standard_conversations())
    truth = expected_flows(packets)
    if version == "5":  # NetFlow v5 cannot carry IPv6
        truth = {k: v for k, v in truth.items() if ":" not in k[0]}
    sluice = SluiceCollector()
    try:
        with nfcapd(tmp_path) as (nf_port, nf_records):
            tee = UdpTee([("127.0.0.1", nf_port), ("127.0.0.1", sluice.port)])
            try:
                result = run([softflowd, "-r", "t.pcap", "-n", f"127.0.0.1:{tee.port}", "-v", version,
                              "-d", "-6", "-T", "full", "-p", "pid", "-c", "ctl"], cwd=tmp_path)
                assert result.returncode == 0, result.stderr
                sluice.wait_for(1)
                sluice.wait_for(tee.datagrams)
            finally:
                tee.close()
    finally:
        sluice.close()
    got = sluice_totals(sluice.flows())
    assert tee.datagrams > 0
    assert sluice.decoder.counters.get("datagrams_total") == tee.datagrams
    assert sluice.decoder.counters.get("decode_errors_total") == 0
    reference = nfdump_totals(nf_records)
    assert icmp_portless(got) == icmp_portless(reference), "Sluice and nfdump disagree on the same export"
    assert got == truth, "Sluice's totals differ from the pcap's conversations"
