"""Real servers for the notification tests: an aiosmtpd SMTP server (plain, STARTTLS,
implicit TLS, AUTH) and rsyslogd (UDP and TCP inputs writing every message's parsed fields
to a file), both on loopback, started and stopped by the tests."""

from __future__ import annotations

import email
import email.policy
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Optional

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .env import require_tool
from .interop import free_tcp_port, free_udp_port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, made with Debian's openssl."""
    openssl = require_tool("openssl")
    cert, key = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


class _Handler:
    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.envelopes.append(envelope)
        return "250 Message accepted"


class SmtpServer:
    """aiosmtpd on a loopback port: ``mode`` plain, starttls (required) or tls (implicit);
    with ``credentials`` it offers AUTH and checks them (not requiring it)."""

    def __init__(self, mode: str = "plain", credentials: Optional[tuple[str, str]] = None,
                 certs: Optional[tuple[Path, Path]] = None, port: Optional[int] = None):
        self.mode, self.credentials, self.certs = mode, credentials, certs
        self.port = port or free_tcp_port()
        self.handler = _Handler()
        self.auth_attempts: list[tuple[str, str]] = []
        self.controller: Optional[Controller] = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.auth_attempts.append((login, password))
        return AuthResult(success=(login, password) == self.credentials, handled=False)  # failure: 535

    def start(self) -> "SmtpServer":
        kw: dict = {"hostname": "127.0.0.1", "port": self.port}
        if self.credentials:
            kw.update(authenticator=self._authenticate, auth_require_tls=False)
        if self.mode != "plain":
            assert self.certs is not None
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.certs)
            if self.mode == "starttls":
                kw.update(tls_context=ctx, require_starttls=True)
            else:
                kw.update(ssl_context=ctx)
        self.controller = Controller(self.handler, **kw)
        if self.mode == "tls":
            # the controller's readiness probe speaks plain SMTP; skip it for implicit TLS
            self.controller.ready_timeout = 5.0
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.original_content, policy=email.policy.default)  # type: ignore[misc]
                for e in self.handler.envelopes]

    @property
    def recipients(self) -> list[list[str]]:
        return [list(e.rcpt_tos) for e in self.handler.envelopes]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[email.message.EmailMessage]:
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.handler.envelopes) < n:
            time.sleep(0.05)
        return self.messages


RSYSLOG_FIELDS = ["pri", "facility", "severity", "hostname", "app", "msgid", "sd", "msg"]


class Rsyslog:
    """rsyslogd with a UDP and a TCP input; every message lands in a file as its parsed fields."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.udp_port, self.tcp_port = free_udp_port(), free_tcp_port()
        self.out = workdir / "messages.log"
        conf = workdir / "rsyslog.conf"
        conf.write_text(f'''
global(workDirectory="{workdir}" maxMessageSize="8k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp_port}")
template(name="fields" type="string"
         string="%pri%\\t%syslogfacility-text%\\t%syslogseverity%\\t%hostname%\\t%app-name%\\t%msgid%\\t%structured-data%\\t%msg%\\n")
*.* action(type="omfile" file="{self.out}" template="fields")
''')
        binary = require_tool("rsyslogd")
        self.proc = subprocess.Popen([binary, "-n", "-f", str(conf), "-i", str(workdir / "rsyslog.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 10
        while time.time() < deadline and not self._listening():
            assert self.proc.poll() is None, self.proc.stdout.read()  # type: ignore[union-attr]
            time.sleep(0.1)

    def _listening(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=0.5):
                return True
        except OSError:
            return False

    def lines(self, n: int, timeout: float = 10.0) -> list[dict[str, str]]:
        deadline = time.time() + timeout
        while True:
            rows = [dict(zip(RSYSLOG_FIELDS, line.split("\t", 7)))
                     for line in (self.out.read_text().splitlines() if self.out.exists() else [])]
            if len(rows) >= n or time.time() >= deadline:
                return rows
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
