"""softflowd (Debian) exports a generated pcap as NetFlow v5, v9 and IPFIX; the same
datagrams go to Sluice and to nfcapd. Per 5-tuple totals must agree three ways: Sluice,
nfdump, and the pcap's own ground truth."""

import pytest

from ..support.env import require_tool
from ..support.interop import export_to_both, icmp_portless, nfdump_totals, run, sluice_totals
from ..support.pcapgen import expected_flows, standard_conversations, write_pcap

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

    def export(port: int) -> None:
        result = run([softflowd, "-r", "t.pcap", "-n", f"127.0.0.1:{port}", "-v", version,
                      "-d", "-6", "-T", "full", "-p", "pid", "-c", "ctl"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    sluice, reference = export_to_both(tmp_path, export)
    got = sluice_totals(sluice.flows())
    assert icmp_portless(got) == icmp_portless(nfdump_totals(reference)), "Sluice and nfdump disagree on the same export"
    assert got == truth, "Sluice's totals differ from the pcap's conversations"
