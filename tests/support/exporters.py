"""Real exporters from Debian packages replaying a pcap to a collector: softflowd, pmacctd."""

from .env import require_tool
from .interop import run


def run_pmacctd(tmp_path, plugin_lines: str):
    pmacctd = require_tool("pmacctd")
    conf = tmp_path / "pmacctd.conf"
    conf.write_text(f"daemonize: false\npcap_savefile: {tmp_path / 't.pcap'}\n{plugin_lines}")
    result = run([pmacctd, "-f", str(conf)], timeout=60)
    # pmacctd's exit status races between its core and plugin processes at the end of a
    # savefile (0 or 1); what matters is that it reported no error and exported everything
    output = result.stdout + result.stderr
    assert "ERROR" not in output, output


def export(tmp_path, exporter: str, version: str, port: int) -> None:
    if exporter == "softflowd":
        softflowd = require_tool("softflowd")
        # -a: flow times from the capture, not the clock
        result = run([softflowd, "-r", "t.pcap", "-n", f"127.0.0.1:{port}", "-v", version, "-d", "-6",
                      "-T", "full", "-a", "-p", "pid", "-c", "ctl"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    else:
        # pmacctd expires flows on capture time: a maximum flow life of 10 s splits the 40 s
        # conversations into several records per direction
        run_pmacctd(tmp_path, f"plugins: nfprobe\nnfprobe_receiver: 127.0.0.1:{port}\nnfprobe_version: {version}\n"
                              "nfprobe_timeouts: tcp=60:tcp.rst=60:tcp.fin=60:udp=60:icmp=60:general=60:maxlife=10:expint=1\n")
