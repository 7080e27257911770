"""The installed ``sluice`` command, run as a subprocess: decode, serve, simulate, config."""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from ..support.env import require_tool
from ..support.interop import free_tcp_port, free_udp_port
from ..support.pcapgen import write_udp_pcap
from ..support.corpus import IGNORED_KEYS, golden_case
from ..support.waiting import wait_until, wait_until_steady
from ..support.server import ADMIN, ADMIN_ENV, SLUICE, metrics, ns2, sluice, start_server, stored_sessions



def test_decode_raw_json_matches_the_corpus_across_files(tmp_path):
    datagrams, want = golden_case("ipfix_yaf")
    # templates in the first file, data in the second: they are read as one stream
    write_udp_pcap(tmp_path / "a.pcap", datagrams[:2], dport=4739)
    write_udp_pcap(tmp_path / "b.pcap", datagrams[2:], dport=9999, start=1_700_000_100.0)
    out = sluice("decode", "--raw", "--json", str(tmp_path / "a.pcap"), str(tmp_path / "b.pcap"))
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key, value in w.items():
            if key not in IGNORED_KEYS:
                assert g[key] == value, key
    assert "3 records decoded; 0 problem(s)" in out.stderr


def test_decode_json_and_table_use_canonical_flows(tmp_path):
    datagrams, want = golden_case("nf5_juniper_mx80")
    write_udp_pcap(tmp_path / "v5.pcap", datagrams)
    out = sluice("decode", "--json", str(tmp_path / "v5.pcap"))
    flows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(flows) == 29
    first = flows[0]
    # v5 header says 1-in-1000 sampling: counts are scaled, the rate kept
    assert (first["src_addr"], first["dst_addr"], first["bytes"], first["packets"], first["sampling_rate"]) == (
        "10.0.0.1", "192.168.0.2", 1_500_000, 1_000, 1000)
    assert first["export_proto"] == "netflow5" and first["exporter_addr"] == "192.0.2.1"
    table = sluice("decode", str(tmp_path / "v5.pcap"))
    lines = table.stdout.splitlines()
    assert len(lines) == 30 and "10.0.0.1:443" in lines[1] and "1500000" in lines[1]


def test_decode_reports_problems_on_stderr_only(tmp_path):
    datagrams, _ = golden_case("ipfix_netscaler_missing_template")
    junk = [b"\x00\x09garbage", b"\x01\x02\x03\x04"]
    write_udp_pcap(tmp_path / "bad.pcap", datagrams + junk)
    out = sluice("decode", "--json", str(tmp_path / "bad.pcap"))
    assert out.returncode == 0
    assert out.stdout == ""
    assert "data sets whose template never arrived" in out.stderr
    assert re.search(r"1\s+netflow9: truncated_header", out.stderr)
    assert re.search(r"1\s+unknown: unknown_version", out.stderr)


def test_decode_unreadable_capture_is_a_usage_error(tmp_path):
    out = sluice("decode", str(tmp_path / "missing.pcap"))
    assert out.returncode == 2 and "cannot read" in out.stderr and out.stdout.strip().startswith("start")
    (tmp_path / "text.pcap").write_text("not a capture")
    out = sluice("decode", str(tmp_path / "text.pcap"))
    assert out.returncode == 2 and "is not a pcap or pcapng capture" in out.stderr


def test_serve_collects_simulated_traffic_of_every_protocol(server):
    ports, proc = server
    sim = sluice("simulate", "--to", "127.0.0.1", "--netflow-port", str(ports["netflow"]), "--ipfix-port",
                 str(ports["ipfix"]), "--sflow-port", str(ports["sflow"]), "--duration", "2", "--rate", "300")
    assert sim.returncode == 0, sim.stderr
    sent = int(re.search(r"sent (\d+) flows", sim.stderr).group(1))

    def flows_in(values: dict[str, float]) -> float:
        return sum(v for k, v in values.items() if k.startswith("sluice_flows_total"))

    m = wait_until(lambda: metrics(ports["http"]), lambda values: flows_in(values) >= 0.8 * sent,
                   what="the sent flows to be decoded")
    for proto, exporter in (("netflow5", "127.0.0.11"), ("netflow9", "127.0.0.12"), ("ipfix", "127.0.0.13"),
                            ("sflow5", "127.0.0.14")):
        assert m[f'sluice_datagrams_total{{exporter="{exporter}",proto="{proto}"}}'] > 0
    flows = sum(v for k, v in m.items() if k.startswith("sluice_flows_total"))
    # the v5 exporter cannot carry IPv6 conversations; everything else arrives
    v5_share = sum(v for k, v in m.items() if k.startswith("sluice_flows_total") and "netflow5" in k)
    assert v5_share > 0 and 0.8 * sent <= flows <= sent
    assert not any(k.startswith("sluice_decode_errors_total") for k in m)
    stored = wait_until_steady(lambda: stored_sessions(ports["http"]), what="the store to hold every session")
    health = httpx.get(f"http://127.0.0.1:{ports['http']}/healthz").json()
    assert {l["protocol"] for l in health["listeners"]} == {"netflow", "ipfix", "sflow"}
    # the flows became session rows (fewer than flows: both directions fold), every one of them stored
    rows_made = metrics(ports["http"])["sluice_session_rows_total"]
    assert stored == rows_made and 0 < stored < flows
    status = httpx.get(f"http://127.0.0.1:{ports['http']}/api/v1/status", auth=ADMIN).json()
    assert status["flows"] == flows and status["decode_errors"] == 0 and "flows_per_second" in status
    anonymous = httpx.get(f"http://127.0.0.1:{ports['http']}/")  # the page needs a login
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login?next=%2F"
    exporters = httpx.get(f"http://127.0.0.1:{ports['http']}/api/v1/exporters", auth=ADMIN).json()
    by = {(e["exporter"], e["protocol"]): e for e in exporters}
    assert set(by) == {("127.0.0.11", "netflow5"), ("127.0.0.12", "netflow9"), ("127.0.0.13", "ipfix"),
                       ("127.0.0.14", "sflow5")}
    assert all(e["datagrams"] > 0 and e["flows"] > 0 and e["sequence_gaps"] == 0 for e in exporters)
    assert all(abs(e["last_datagram_ms"] - time.time() * 1000) < 60_000 for e in exporters)
    page = httpx.get(f"http://127.0.0.1:{ports['http']}/", auth=ADMIN).text
    assert "<title>Dashboard · Sluice</title>" in page and 'id="who">admin' in page


def test_serve_prints_where_it_listens_and_stops_cleanly(server, tmp_path):
    ports, proc = server
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    err = proc.stderr.read()
    assert f"http://localhost:{ports['http']}/" in err
    assert f"UDP {ports['netflow']}" in err
    assert proc.returncode == 0
    # no password was generated (one was given): the banner says how to set admin's, and that works
    hint = re.search(r"to set its password: (SLUICE_DATA_DIR=(\S+) )?sluice users passwd admin", err)
    assert hint and hint.group(2) == str(tmp_path / "var"), err
    changed = sluice("users", "passwd", "admin", "--password", "a-new-admin-password",
                     env=dict(os.environ, SLUICE_DATA_DIR=hint.group(2)))
    assert changed.returncode == 0, changed.stderr


def test_serve_rejects_bad_configuration(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text("[collect]\nnetflow_port = 99999\nsampling = { '10.0.0.1' = 0 }\n")
    out = sluice("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "collect.netflow_port" in out.stderr and "65535" in out.stderr
    assert "rate for 10.0.0.1 must be >= 1" in out.stderr
    cfg.write_text("[collect\n")
    out = sluice("serve", "--config", str(cfg))
    assert out.returncode == 2 and "not valid TOML" in out.stderr
    out = sluice("serve", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "not found" in out.stderr
    env = dict(os.environ, SLUICE_HTTP__PORT="0")
    out = sluice("serve", env=env)
    assert out.returncode == 2 and "http.port" in out.stderr


def test_serve_reports_a_busy_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        out = sluice("serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1", "--netflow-port", str(port), "--ipfix-port", "0",
                     "--sflow-port", "0", "--http-port", str(free_tcp_port()), "--http-listen", "127.0.0.1")
    assert out.returncode == 1
    assert f"cannot listen for netflow on UDP 127.0.0.1:{port}" in out.stderr
    assert "--netflow-port" in out.stderr


def test_serve_says_in_one_line_when_the_data_directory_cannot_be_used(tmp_path):
    """It printed a 60-line traceback; /proc refuses a new directory even to root."""
    out = sluice("serve", "--data-dir", "/proc/sluice-data", "--listen", "127.0.0.1", "--netflow-port", "0",
                 "--ipfix-port", "0", "--sflow-port", "0", "--http-port", str(free_tcp_port()), "--http-listen", "127.0.0.1")
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("sluice: cannot use the data directory /proc/sluice-data") and "--data-dir" in line


def test_config_check_layers_file_environment_and_defaults(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text("log_level = 'info'\n[collect]\nnetflow_port = 9995\nipfix_port = 9996\n")
    env = dict(os.environ, SLUICE_COLLECT__IPFIX_PORT="7777")
    out = sluice("config", "check", "--config", str(cfg), env=env)
    assert out.returncode == 0, out.stderr
    settings = json.loads(out.stdout)
    assert settings["collect"]["netflow_port"] == 9995  # file
    assert settings["collect"]["ipfix_port"] == 7777  # environment beats file
    assert settings["collect"]["sflow_port"] == 6343  # default
    assert settings["log_level"] == "info"


def test_config_check_validates_the_state_database_url_in_one_line(tmp_path):
    """``[state] url``: PostgreSQL (postgresql+psycopg://…) or SQLite; anything else is named
    in one line with what to write instead; the password is never printed."""
    cfg = tmp_path / "sluice.toml"
    cfg.write_text("[state]\nurl = 'postgresql+psycopg://sluice:s3cret-pw@db.example:5432/sluice'\n")
    out = sluice("config", "check", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"]["url"] == "postgresql+psycopg://sluice:***@db.example:5432/sluice"
    assert "s3cret-pw" not in out.stdout
    for url, expected in [("mysql://u:p@h/d", "mysql:// is not supported: use postgresql+psycopg://"),
                          ("postgresql+psycopg://u@h:5432", "names no database"),
                          ("not a url at all", "not a database URL")]:
        cfg.write_text(f"[state]\nurl = '{url}'\n")
        out = sluice("config", "check", "--config", str(cfg))
        assert out.returncode == 2, out.stdout
        [line] = out.stderr.strip().splitlines()
        assert "state.url" in line and expected in line, line


def test_config_check_validates_the_clickhouse_store_in_one_line(tmp_path):
    cfg = tmp_path / "sluice.toml"
    cfg.write_text("[store]\nbackend = 'clickhouse'\nclickhouse_servers = ['ch1:9000', 'ch2:9000']\n")
    out = sluice("config", "check", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["store"]["clickhouse_servers"] == ["ch1:9000", "ch2:9000"]
    for body, expected in [("backend = 'clickhouse'", "needs clickhouse_servers"),
                           ("backend = 'clickhouse'\nclickhouse_servers = ['ch1']", "'ch1' is not host:port"),
                           ("backend = 'clickhouse'\nclickhouse_servers = ['ch1:9000']\nclickhouse_database = 'a-b'",
                            "may hold letters, digits and _ only"),
                           ("backend = 'cassandra'", "store.backend")]:
        cfg.write_text(f"[store]\n{body}\n")
        out = sluice("config", "check", "--config", str(cfg))
        assert out.returncode == 2, out.stdout
        [line] = out.stderr.strip().splitlines()
        assert expected in line, line


def test_numpy_huge_pages_are_off_unless_asked_for(monkeypatch):
    import numpy as np

    from sluice.config import Settings
    from sluice.allocator import use_huge_pages

    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "")  # restored after the test
    set_madvise = np._core.multiarray._set_madvise_hugepage
    before = set_madvise(True)
    try:
        use_huge_pages(Settings().huge_pages)
        assert set_madvise(False) is False  # the previous state: off
        assert os.environ["NUMPY_MADVISE_HUGEPAGE"] == "0"  # and so in worker processes
        use_huge_pages(True)
        assert set_madvise(True) is True and os.environ["NUMPY_MADVISE_HUGEPAGE"] == "1"
    finally:
        set_madvise(before)


def test_help_documents_every_serve_option():
    out = sluice("serve", "--help", env=dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb"))
    for option in ("--config", "--listen", "--netflow-port", "--ipfix-port", "--sflow-port", "--http-port",
                   "--log-level", "--simulate"):
        assert option in out.stdout
    assert "SLUICE_COLLECT__NETFLOW_PORT" in out.stdout


@pytest.mark.parametrize("level, fmt", [(None, None), ("info", None), ("debug", "json")])
def test_log_level_and_format(tmp_path, level, fmt):
    http = free_tcp_port()
    netflow = free_udp_port()
    args = [SLUICE, "serve", "--listen", "127.0.0.1", "--netflow-port", str(netflow), "--ipfix-port", "0",
            "--sflow-port", "0", "--http-listen", "127.0.0.1", "--http-port", str(http)]
    args += ["--log-level", level] if level else []
    args += ["--log-format", fmt] if fmt else []
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        sim = sluice("simulate", "--netflow-port", str(netflow), "--duration", "0.6", "--protocol", "netflow9")
        assert sim.returncode == 0
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    err = proc.stderr.read()
    log_lines = [l for l in err.splitlines() if "listening" in l or "batch decoded" in l]
    if level is None:  # quiet by default: the banner only
        assert log_lines == []
        assert "Sluice is running" in err
    elif level == "info":
        assert any("listening" in l and f"port={netflow}" in l for l in log_lines)
        assert not any("batch decoded" in l for l in log_lines)
    else:
        events = [json.loads(l) for l in err.splitlines() if l.startswith("{")]
        assert {"listening", "batch decoded"} <= {e["event"] for e in events}
        assert all("timestamp" in e and "level" in e for e in events)


def test_the_store_survives_kill_9_of_the_server_mid_write(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    server = start_server(tmp_path, http, netflow)
    sim = subprocess.Popen([SLUICE, "simulate", "--netflow-port", str(netflow), "--protocol", "netflow9",
                            "--rate", "3000", "--duration", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        stored = 0
        for _ in range(100):  # wait for several flushes while traffic keeps coming
            time.sleep(0.2)
            stored = stored_sessions(http)
            if stored > 5000:
                break
        assert stored > 5000
        server.send_signal(signal.SIGKILL)  # in the middle of receiving and writing
        server.wait(10)
    finally:
        sim.kill()
        sim.wait()
    again = start_server(tmp_path, http, netflow)
    try:
        after = stored_sessions(http)
        assert after >= stored, "what was stored before the kill is still there"
        top = httpx.get(f"http://127.0.0.1:{http}/api/v1/reports", auth=ADMIN, timeout=5).json()
        assert top and top[0]["value"] > 0  # the stored sessions answer reports again
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(10) == 0


def test_users_command_manages_accounts(tmp_path):
    env = dict(os.environ, SLUICE_DATA_DIR=str(tmp_path / "var"))
    run = lambda *a, **kw: sluice("users", *a, env={**env, **kw.get("extra", {})})  # noqa: E731
    assert run("create", "ops", "--admin", "--password", "ops-password-1").returncode == 0
    assert run("create", "viewer", extra={"SLUICE_NEW_PASSWORD": "viewer-password"}).returncode == 0
    listed = run("list").stdout
    assert "ops\tadmin" in listed and "viewer\tuser" in listed
    dup = run("create", "viewer", "--password", "another-password")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    weak = run("create", "shorty", "--password", "short")
    assert weak.returncode == 1 and "at least 8 characters" in weak.stderr
    last = run("revoke", "ops")
    assert last.returncode == 1 and "last administrator" in last.stderr
    assert run("grant", "viewer").returncode == 0 and run("revoke", "ops").returncode == 0
    assert run("passwd", "ops", "--password", "ops-password-2").returncode == 0
    assert run("delete", "ops").returncode == 0
    assert "ops" not in run("list").stdout
    # the server sees the same accounts
    from sluice.state.db import open_state
    from sluice.state.users import Users

    users = Users(open_state(tmp_path / "var"))
    assert users.authenticate("viewer", "viewer-password").is_admin


def test_serves_https_with_a_certificate(tmp_path):
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    http, netflow = free_tcp_port(), free_udp_port()
    proc = subprocess.Popen(
        [SLUICE, "serve", "--listen", "127.0.0.1", "--netflow-port", str(netflow), "--ipfix-port", "0",
         "--sflow-port", "0", "--http-listen", "127.0.0.1", "--http-port", str(http), "--data-dir",
         str(tmp_path / "var"), "--tls-cert", str(cert), "--tls-key", str(key)],
        stderr=subprocess.PIPE, text=True, env=ADMIN_ENV)
    try:
        for _ in range(100):
            try:
                r = httpx.post(f"https://127.0.0.1:{http}/api/v1/login", json={"username": ADMIN[0], "password": ADMIN[1]},
                               verify=ssl.create_default_context(cafile=str(cert)), timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 200
        assert "secure" in r.headers["set-cookie"].lower()  # cookies only over TLS
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=2)  # no plain HTTP on that port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert f"https://localhost:{http}/" in proc.stderr.read()
    out = sluice("serve", "--tls-cert", str(cert))
    assert out.returncode == 2 and "tls_cert and http.tls_key go together" in out.stderr


def test_ns2_tools_against_a_live_server(server):
    ports, proc = server
    sim = sluice("simulate", "--netflow-port", str(ports["netflow"]), "--ipfix-port", str(ports["ipfix"]),
                 "--sflow-port", str(ports["sflow"]), "--duration", "2", "--rate", "400")
    assert sim.returncode == 0
    wait_until_steady(lambda: stored_sessions(ports["http"]), what="the simulated sessions to be stored")
    srv = f"127.0.0.1:{ports['http']}"
    login = ["-s", srv, "-un", ADMIN[0], "-up", ADMIN[1]]
    table = ns2("ns2hostsb", *login, "-t", "-15m", "-n", "5")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("+--") and "| rank" in lines[1] and "address" in lines[1] and "bytes" in lines[1]
    assert len([l for l in lines if l.startswith("| ") and "rank" not in l]) == 5
    # the same numbers as the API gives
    api_top = httpx.get(f"http://{srv}/api/v1/reports", params={"entity": "host", "metric": "bytes", "top": 5},
                        auth=ADMIN).json()
    assert isinstance(api_top[0]["value"], int)  # a JSON number, not text
    csv_out = ns2("ns2hostsb", *login, "-n", "5", "-c")
    first = csv_out.stdout.splitlines()[0].split(",")
    assert first[1] == api_top[0]["address"] and int(first[2]) == api_top[0]["value"]
    with_header = ns2("ns2hostsb", *login, "-n", "3", "-c+").stdout.splitlines()
    assert with_header[0] == "rank,address,bytes" and len(with_header) == 4
    sent = ns2("ns2hostsb", *login, "-snd", "-c", "-n", "1").stdout
    received = ns2("ns2hostsb", *login, "-rcv", "-c", "-n", "1").stdout
    assert sent and received
    ports_out = ns2("ns2portss", *login, "-t", "1h", "-q", "PROTO == tcp", "-c+").stdout.splitlines()
    assert ports_out[0] == "rank,protocol,port,sessions" and all(l.split(",")[1] == "6" for l in ports_out[1:])
    countries = ns2("ns2countrysb", *login, "-c").stdout
    assert "US" in countries or "XP" in countries
    pairs = ns2("ns2pairsuh", *login)
    assert pairs.returncode == 2 and "unique hosts of a host pair" in pairs.stderr
    sq = ns2("ns2sq", "-s", srv, "-un", ADMIN[0], "-n", "3", "-c+", env=dict(os.environ, SLUICE_PASSWORD=ADMIN[1]))
    assert sq.returncode == 0 and sq.stdout.splitlines()[0].startswith("start,end,proto,client")
    assert len(sq.stdout.splitlines()) == 4
    # failures: one line on stderr and the documented exit status
    bad_filter = ns2("ns2hostsb", *login, "-q", "SRVPORT 80")
    assert bad_filter.returncode == 2 and "comparison operator" in bad_filter.stderr and "position 9" in bad_filter.stderr
    bad_time = ns2("ns2hostsb", *login, "-t", "-15x")
    assert bad_time.returncode == 2 and "bad time frame" in bad_time.stderr
    wrong = ns2("ns2hostsb", "-s", srv, "-un", ADMIN[0], "-up", "wrong-password")
    assert wrong.returncode == 3 and "authentication failed" in wrong.stderr and len(wrong.stderr.splitlines()) == 1
    alerts = ns2("ns2hostsb", *login, "-au", "admin", "-at", "-3m")
    assert alerts.returncode == 2 and "go with -al" in alerts.stderr
    assert ns2("ns2hostsb", *login, "-al", "-au", "admin", "-at", "-3m").returncode == 0  # none yet: no lines
    down = ns2("ns2hostsb", "-s", f"127.0.0.1:{free_tcp_port()}", "-un", "x", "-up", "y")
    assert down.returncode == 4 and "cannot reach the server" in down.stderr


def test_ns2um_manages_accounts_over_the_api(server):
    ports, _ = server
    login = ["-s", f"127.0.0.1:{ports['http']}", "-un", ADMIN[0], "-up", ADMIN[1]]
    assert ns2("ns2um", *login, "add", "dave", "dave-password-1").returncode == 0
    assert "dave\tuser" in ns2("ns2um", *login, "list").stdout
    assert ns2("ns2um", *login, "grant", "dave").returncode == 0
    assert "dave\tadmin" in ns2("ns2um", *login, "list").stdout
    weak = ns2("ns2um", *login, "passwd", "dave", "short")
    assert weak.returncode == 2 and "password" in weak.stderr
    as_dave = ["-s", f"127.0.0.1:{ports['http']}", "-un", "dave", "-up", "dave-password-1"]
    assert ns2("ns2um", *as_dave, "revoke", "admin").returncode == 0
    last = ns2("ns2um", *as_dave, "revoke", "dave")
    assert last.returncode == 1 and "last administrator" in last.stderr
    assert ns2("ns2um", *as_dave, "del", "admin").returncode == 0
    assert ns2("ns2um", *login, "list").returncode == 3  # admin is gone


def test_sluice_report_and_query_over_the_api(server):
    ports, _ = server
    sim = sluice("simulate", "--netflow-port", str(ports["netflow"]), "--duration", "1.5", "--rate", "300",
                 "--protocol", "ipfix", "--ipfix-port", str(ports["netflow"]))
    assert sim.returncode == 0
    wait_until_steady(lambda: stored_sessions(ports["http"]), what="the simulated sessions to be stored")
    env = dict(os.environ, SLUICE_SERVER=f"127.0.0.1:{ports['http']}", SLUICE_USER=ADMIN[0], SLUICE_PASSWORD=ADMIN[1])
    out = sluice("report", "--entity", "country", "--metric", "sessions", "--json", env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    assert rows and set(rows[0]) == {"country", "value"}
    q = sluice("query", "-n", "5", "-q", "PROTO == udp", "--json", env=env)
    sessions = [json.loads(l) for l in q.stdout.splitlines()]
    assert 0 < len(sessions) <= 5 and all(s["protocol"] == 17 for s in sessions)
    table = sluice("report", "-n", "3", env=env)
    assert table.stdout.startswith("+--") and "| address" in table.stdout
    bad = sluice("query", "-q", "PROTO ==", env=env)
    assert bad.returncode == 2 and "expected a value for PROTO" in bad.stderr
