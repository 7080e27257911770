"""The HTTP API: authentication, access control for every route and role, login throttling,
CSRF, clear errors, and schemathesis against the live OpenAPI schema."""

import time
import warnings

import numpy as np
import pytest
import schemathesis
import starlette.exceptions
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from sluice.counters import Counters
from sluice.flows.schema import SessionBatch
from sluice.state.db import open_state

from ..support.app import ADMIN, ALICE, BOB, make_app

@pytest.fixture
def api(tmp_path):
    app, users, store = make_app(tmp_path)
    with TestClient(app) as client:
        yield client, users
    store.close()


# route -> (method, path, json body, who may: "any" user, the "owner" (bob) of the resource, or "admin")
ROUTES = [
    ("GET", "/api/v1/me", None, "any"),
    ("GET", "/api/v1/status", None, "any"),
    ("GET", "/api/v1/exporters", None, "any"),
    ("GET", "/api/v1/sessions", None, "any"),
    ("GET", "/api/v1/reports?entity=host&metric=bytes", None, "any"),
    ("GET", "/api/v1/timeseries?metric=bytes", None, "any"),
    ("POST", "/api/v1/tokens", {"name": "t"}, "any"),
    ("GET", "/api/v1/tokens", None, "any"),
    ("GET", "/api/v1/users", None, "admin"),
    ("POST", "/api/v1/users", {"username": "carol", "password": "carol-password-1"}, "admin"),
    ("PATCH", "/api/v1/users/bob", {"password": "bob-password-99"}, "owner"),  # bob's own password
    ("DELETE", "/api/v1/users/bob", None, "admin"),
    ("GET", "/", None, "any"),
]


ROLES = ["anonymous", "owner", "other_user", "admin"]


@pytest.mark.parametrize("method, path, body, who", ROUTES)
@pytest.mark.parametrize("role", ROLES)
def test_access_control_matrix(tmp_path, method, path, body, who, role, state_url):
    app, users, store = make_app(tmp_path, state_url)
    with TestClient(app) as client:
        auth = {"anonymous": None, "owner": BOB, "other_user": ALICE, "admin": ADMIN}[role]
        r = client.request(method, path, json=body, auth=auth, follow_redirects=False)
        denied = (who == "admin" and role in ("owner", "other_user")) or (who == "owner" and role == "other_user")
        if role == "anonymous" and path == "/":  # the web page: browsers go to the login page
            assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
        elif role == "anonymous":
            assert r.status_code == 401
            assert "authentication required" in r.json()["detail"]
            assert r.headers["www-authenticate"].startswith("Basic")
        elif denied:
            assert r.status_code == 403, r.text
            detail = r.json()["detail"]
            assert "administrator" in detail or "only your own password" in detail
        else:
            assert r.status_code in (200, 201, 204), r.text
    store.close()


def test_users_change_only_their_own_password(api):
    client, users = api
    assert client.patch("/api/v1/users/alice", json={"password": "alice-new-pass"}, auth=ALICE).status_code == 200
    assert client.get("/api/v1/me", auth=("alice", "alice-new-pass")).status_code == 200
    r = client.patch("/api/v1/users/alice", json={"is_admin": True}, auth=("alice", "alice-new-pass"))
    assert r.status_code == 403 and "only your own password" in r.json()["detail"]
    assert client.patch("/api/v1/users/bob", json={"password": "x" * 10}, auth=("alice", "alice-new-pass")).status_code == 403


def test_the_last_administrator_cannot_go(api):
    client, _ = api
    r = client.patch("/api/v1/users/admin", json={"is_admin": False}, auth=ADMIN)
    assert r.status_code == 409 and "last administrator" in r.json()["detail"]
    r = client.delete("/api/v1/users/admin", auth=ADMIN)
    assert r.status_code == 409 and "last administrator" in r.json()["detail"]
    assert client.patch("/api/v1/users/alice", json={"is_admin": True}, auth=ADMIN).status_code == 200
    assert client.patch("/api/v1/users/admin", json={"is_admin": False}, auth=ADMIN).status_code == 200
    # alice is the administrator now
    assert client.delete("/api/v1/users/nobody", auth=ALICE).status_code == 404
    assert client.patch("/api/v1/users/nobody", json={}, auth=ALICE).status_code == 404


def test_cookie_login_needs_csrf_for_changes(api):
    client, _ = api
    r = client.post("/api/v1/login", json={"username": "alice", "password": ALICE[1]})
    assert r.status_code == 200 and r.json()["username"] == "alice"
    csrf = r.json()["csrf_token"]
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert client.get("/api/v1/me").json() == {"username": "alice", "is_admin": False}
    r = client.post("/api/v1/tokens", json={"name": "x"})
    assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    assert client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    token = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf}).json()["token"]
    assert client.post("/api/v1/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    client.cookies.clear()
    assert client.get("/api/v1/me").status_code == 401
    # the bearer token made during the login outlives it
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["username"] == "alice"
    assert client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_api_tokens_are_listed_revoked_expire_and_end_with_the_password(api):
    client, _ = api
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    kept = client.post("/api/v1/tokens", json={"name": "cron"}, auth=BOB).json()
    brief = client.post("/api/v1/tokens", json={"name": "brief", "expires_in_days": 2e-6}, auth=BOB).json()
    assert kept["expires_at"] is None and brief["expires_at"] is not None
    assert client.get("/api/v1/me", headers=bearer(kept["token"])).json()["username"] == "bob"
    time.sleep(0.3)  # past the brief one's 0.17 s
    r = client.get("/api/v1/me", headers=bearer(brief["token"]))
    assert r.status_code == 401 and "unknown, expired or revoked" in r.json()["detail"]
    listed = {t["name"]: t for t in client.get("/api/v1/tokens", auth=BOB).json()}
    assert set(listed) == {"cron", "brief"} and "token" not in listed["cron"]
    assert listed["brief"]["expired"] and not listed["cron"]["expired"]
    assert listed["cron"]["last_used_at"] is not None and listed["brief"]["last_used_at"] is None
    for bad in (0, -1, 5000, "soon"):
        assert client.post("/api/v1/tokens", json={"expires_in_days": bad}, auth=BOB).status_code == 422
    # another user neither sees nor revokes them
    assert client.get("/api/v1/tokens", auth=ALICE).json() == []
    assert client.delete(f"/api/v1/tokens/{kept['id']}", auth=ALICE).status_code == 404
    assert client.delete(f"/api/v1/tokens/{kept['id']}", auth=BOB).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(kept["token"])).status_code == 401
    assert client.delete(f"/api/v1/tokens/{kept['id']}", auth=BOB).status_code == 404
    # a password reset by an administrator ends every token of the user
    third = client.post("/api/v1/tokens", json={"name": "third"}, auth=BOB).json()["token"]
    assert client.patch("/api/v1/users/bob", json={"password": "bob-password-new"}, auth=ADMIN).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(third)).status_code == 401
    assert client.get("/api/v1/tokens", auth=("bob", "bob-password-new")).json() == []


def test_unprivileged_users_may_not_point_notifications_at_loopback(api):
    client, _ = api
    with warnings.catch_warnings():
        # Starlette deprecated the name of the status this answers; code using a name it
        # later removes would answer 500 instead
        deprecated = getattr(starlette.exceptions, "StarletteDeprecationWarning", DeprecationWarning)
        warnings.simplefilter("error", deprecated)
        r = client.put("/api/v1/preferences", json={"webhook_url": "http://127.0.0.1:9640/api/v1/users"}, auth=BOB)
    assert r.status_code == 422
    [err] = r.json()["detail"]
    assert err["loc"][-1] == "webhook_url" and "loopback" in err["msg"] and "destinations_allow" in err["msg"]
    r = client.put("/api/v1/preferences", json={"syslog_host": "169.254.169.254", "syslog_port": 80}, auth=BOB)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "syslog_host"
    assert client.put("/api/v1/preferences", json={"syslog_host": "192.0.2.7"}, auth=BOB).status_code == 200
    # an administrator chooses their own
    assert client.put("/api/v1/preferences", json={"webhook_url": "http://127.0.0.1:9/x"}, auth=ADMIN).status_code == 200


def test_login_throttling(api):
    client, _ = api
    for _ in range(5):
        assert client.post("/api/v1/login", json={"username": "bob", "password": "wrong-guess"}).status_code == 401
    r = client.post("/api/v1/login", json={"username": "bob", "password": BOB[1]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "too many failed logins" in r.json()["detail"]
    assert client.get("/api/v1/me", auth=("bob", BOB[1])).status_code == 429  # Basic is throttled too
    assert client.get("/api/v1/me", auth=ALICE).status_code == 200  # others are not


def test_made_up_names_from_one_address_are_throttled_and_other_addresses_are_not(tmp_path):
    """Each made-up name costs a password check: one address gets 30 failures whatever the
    names, then waits; a user's right password from another address still gets in."""
    from sluice.state.users import LoginThrottle

    app, users, store = make_app(tmp_path)
    with TestClient(app, client=("192.0.2.50", 40000)) as sprayer, TestClient(app, client=("192.0.2.60", 40000)) as bob:
        for i in range(LoginThrottle().client_attempts):
            assert sprayer.get("/api/v1/me", auth=(f"nobody{i}", "guess-guess")).status_code == 401
        r = sprayer.get("/api/v1/me", auth=("someone-else", "guess-guess"))
        assert r.status_code == 429 and "too many failed logins from 192.0.2.50" in r.json()["detail"]
        assert sprayer.get("/api/v1/me", auth=BOB).status_code == 429  # that address waits, for every name
        assert bob.get("/api/v1/me", auth=BOB).status_code == 200
    store.close()


def test_password_checks_run_a_few_at_a_time_and_a_checked_password_is_remembered(tmp_path):
    """24 requests at once with made-up names took 1.5 GB (64 MiB of argon2 each): at most
    CONCURRENT_CHECKS run at once. A script's password, checked once, is not checked again for
    a minute - unless it changed."""
    import threading

    from sluice.http import auth

    app, users, store = make_app(tmp_path)
    checking, most, calls = 0, 0, []
    lock = threading.Lock()
    real = users.authenticate

    def counted(username, password):
        nonlocal checking, most
        with lock:
            checking += 1
            most = max(most, checking)
            calls.append(username)
        try:
            time.sleep(0.05)  # room for the others to pile up
            return real(username, password)
        finally:
            with lock:
                checking -= 1

    users.authenticate = counted
    with TestClient(app) as client:
        codes: list[int] = []
        threads = [threading.Thread(target=lambda i=i: codes.append(
            client.get("/api/v1/me", auth=(f"made-up-{i}", "guess-guess")).status_code)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert codes == [401] * 24 and 1 < most <= auth.CONCURRENT_CHECKS, most
        calls.clear()
        for _ in range(3):
            assert client.get("/api/v1/me", auth=ALICE).json()["username"] == "alice"
        assert calls == ["alice"]  # checked once
        users.set_password("alice", "alice-password-new")
        assert client.get("/api/v1/me", auth=ALICE).status_code == 401  # the remembered one is void
        assert client.get("/api/v1/me", auth=("alice", "alice-password-new")).status_code == 200
        assert client.get("/api/v1/me", auth=("alice", "alice-password-new2")).status_code == 401
    store.close()


def test_clear_errors_for_bad_input(api):
    client, _ = api
    r = client.get("/api/v1/sessions", params={"filter": "SRVPORT 80"}, auth=ALICE)
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "filter"] and err["position"] == 9 and "comparison operator" in err["msg"]
    r = client.get("/api/v1/reports", params={"entity": "planet"}, auth=ALICE)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "entity"]
    r = client.post("/api/v1/users", json={"username": "x y", "password": "short"}, auth=ADMIN)
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {("body", "username"), ("body", "password")}
    r = client.get("/api/v1/sessions", params={"start_ms": 10, "end_ms": 5}, auth=ALICE)
    assert r.status_code == 422 and "time frame is empty" in r.json()["detail"][0]["msg"]
    r = client.get("/api/v1/me", headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401 and "malformed" in r.json()["detail"]


def test_data_routes_answer_with_sessions(api):
    client, _ = api
    rows = client.get("/api/v1/sessions", params={"filter": "SRVPORT == 443 && CLNBYTS >= 1000"}, auth=ALICE).json()
    assert len(rows) == 10 and all(r["cln_bytes"] >= 1000 for r in rows)
    assert rows[0]["cln_addr"].startswith("10.0.1.")
    top = client.get("/api/v1/reports", params={"entity": "host", "metric": "bytes", "direction": "sender", "top": 3},
                     auth=ALICE).json()
    # clients 10.0.1.i send i*100 bytes, servers 10.0.2.i send 1000 each: the top three senders
    assert [(t["address"], t["value"]) for t in top] == [("10.0.1.19", 1900), ("10.0.1.18", 1800), ("10.0.1.17", 1700)]
    series = client.get("/api/v1/timeseries", params={"metric": "sessions"}, auth=ALICE).json()
    assert sum(p["value"] for p in series["points"]) == 20 and series["bucket_ms"] == 10_000


def test_schemathesis_finds_no_server_error(tmp_path):
    app, users, store = make_app(tmp_path)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    failures = []
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            response = case.call(auth=ADMIN)
            if response.status_code >= 500:
                failures.append((op.label, response.status_code, response.text[:200]))

        check()
    store.close()
    assert failures == []


PREF_ROUTES = [
    ("GET", "/api/v1/preferences", None, "any"),
    ("PUT", "/api/v1/preferences", {"email_to": "me@example.org"}, "any"),
    ("GET", "/api/v1/settings", None, "admin"),
    ("PUT", "/api/v1/settings", {"smtp_host": "mail.example.org", "smtp_from": "sluice@example.org"}, "admin"),
]


@pytest.mark.parametrize("method, path, body, who", PREF_ROUTES)
@pytest.mark.parametrize("role", ROLES)
def test_preference_routes_access(tmp_path, method, path, body, who, role, state_url):
    test_access_control_matrix(tmp_path, method, path, body, who, role, state_url)


def test_preferences_are_per_user_and_validated(api):
    client, _ = api
    body = {"email_to": "Alice@Example.org", "syslog_host": "siem.example.org", "syslog_port": 6514,
            "syslog_facility": "local3", "syslog_format": "cef", "syslog_transport": "tcp"}
    got = client.put("/api/v1/preferences", json=body, auth=ALICE).json()
    assert got["email_to"] == "Alice@example.org" and got["syslog_facility"] == "local3"
    assert client.get("/api/v1/preferences", auth=ALICE).json() == got
    assert client.get("/api/v1/preferences", auth=BOB).json()["email_to"] == ""  # not alice's
    bad = {"email_to": "not an address", "syslog_host": "bad host!", "syslog_port": 70000,
           "syslog_facility": "local9", "syslog_format": "xml"}
    r = client.put("/api/v1/preferences", json=bad, auth=ALICE)
    assert r.status_code == 422
    fields = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
    assert set(fields) == {"email_to", "syslog_host", "syslog_port", "syslog_facility", "syslog_format"}
    assert "is not an e-mail address" in fields["email_to"]
    assert "neither an IP address nor a host name" in fields["syslog_host"]


def test_no_header_injection_through_any_string(api):
    client, _ = api
    for field, value in [("email_to", "a@example.org\r\nBcc: victim@example.org"), ("syslog_host", "x\nlocal")]:
        r = client.put("/api/v1/preferences", json={field: value}, auth=ALICE)
        assert r.status_code == 422 and "control characters" in r.text
    for field, value in [("smtp_from", "s@example.org\r\nSubject: hi"), ("smtp_username", "u\r\nx"),
                         ("smtp_password", "p\nq"), ("smtp_host", "mail\r\n")]:
        r = client.put("/api/v1/settings", json={field: value}, auth=ADMIN)
        assert r.status_code == 422 and "control characters" in r.text, (field, r.text)


def test_system_settings_keep_the_password_private(api):
    client, _ = api
    r = client.put("/api/v1/settings", json={"smtp_host": "10.0.0.25", "smtp_port": 587, "smtp_security": "starttls",
                                             "smtp_username": "relay", "smtp_password": "s3cret", "smtp_from":
                                             "sluice@example.org", "retention_days": 7}, auth=ADMIN)
    assert r.status_code == 200 and r.json()["smtp_password_set"] is True and "s3cret" not in r.text
    r = client.put("/api/v1/settings", json={"smtp_host": "10.0.0.26", "smtp_from": "sluice@example.org"}, auth=ADMIN)
    assert r.json()["smtp_password_set"] is True  # omitted: kept
    assert client.get("/api/v1/settings", auth=ALICE).status_code == 403
    r = client.put("/api/v1/settings", json={"smtp_security": "ssl3", "smtp_port": 0}, auth=ADMIN)
    assert r.status_code == 422 and {e["loc"][-1] for e in r.json()["detail"]} == {"smtp_security", "smtp_port"}


def test_retention_set_by_an_administrator_applies(tmp_path):
    from sluice.counters import Counters as C
    from sluice.config import load
    from sluice.ingest import Ingest
    from sluice.state.preferences import Preferences, SystemSettingsIn

    settings = load(None, data_dir=str(tmp_path / "var"))
    ingest = Ingest(settings, C())
    prefs = Preferences(open_state(tmp_path / "state"))
    ingest.retention_days = lambda: prefs.system().retention_days
    now = int(time.time() * 1000)
    old = SessionBatch.build(10, session_id=np.arange(10), start_ms=now - 5 * 86_400_000, end_ms=now - 5 * 86_400_000)
    ingest.store.append(old)
    ingest.maintenance_round()
    assert ingest.store.stats().rows == 10  # the configuration keeps 30 days
    prefs.set_system(SystemSettingsIn(retention_days=2))
    ingest.maintenance_round()
    assert ingest.store.stats().rows == 0
    ingest.stop()


def test_flow_rate_is_measured_between_rounds(tmp_path):
    from sluice.config import load
    from sluice.ingest import Ingest

    counters = Counters()
    ingest = Ingest(load(None, data_dir=str(tmp_path / "var")), counters)
    counters.inc("flows_total", 1000, exporter="192.0.2.1", proto="ipfix")
    ingest.maintenance_round(retention=False)
    counters.inc("flows_total", 500, exporter="192.0.2.1", proto="ipfix")
    time.sleep(0.2)
    ingest.maintenance_round(retention=False)
    rate = counters.get("flows_per_second")
    assert 500 / 0.4 < rate < 500 / 0.19  # 500 flows in a little over 0.2 s
    ingest.stop()


def test_bodies_that_cannot_be_parsed_safely_get_clear_errors(api):
    """The hardening review: NaN/Infinity in a JSON body answered 500 (the 422 could not be
    encoded); a 60 MB login body was parsed. Now: 422 naming the field, and 413 above 1 MiB."""
    client, _ = api
    for raw in ('{"title": "t", "metric": "bytes_sent", "entity": "host", "threshold": NaN}',
                '{"title": "t", "metric": "bytes_sent", "entity": "host", "threshold": Infinity}'):
        r = client.post("/api/v1/alert-definitions", content=raw, auth=ALICE,
                        headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "threshold"]
    big = b'{"username": "alice", "password": "' + b"x" * (1 << 20) + b'"}'
    r = client.post("/api/v1/login", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than 1,048,576 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(40):
            yield b"y" * 65536

    r = client.post("/api/v1/login", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/api/v1/login", json={"username": ALICE[0], "password": ALICE[1]}).status_code == 200


def test_the_api_answers_503_while_postgresql_is_down_and_recovers(tmp_path, postgres):
    """The state database (PostgreSQL) stops: requests that need it get 503 with the reason in
    one line, not a 500 and not a hang; when it is back, the same requests succeed."""
    app, users, store = make_app(tmp_path, postgres.new_database())
    try:
        with TestClient(app) as client:
            assert client.get("/api/v1/me", auth=ALICE).status_code == 200
            postgres.stop("immediate")  # as if it died
            try:
                started = time.time()
                r = client.get("/api/v1/me", auth=ALICE)
                assert r.status_code == 503, r.text
                assert time.time() - started < 30
                detail = r.json()["detail"]
                assert detail.startswith("state database unavailable (") and "\n" not in detail
                assert "Connection refused" in detail or "connection" in detail.lower()
                assert r.headers["retry-after"] == "5"
            finally:
                postgres.start()
            assert client.get("/api/v1/me", auth=ALICE).status_code == 200
            assert client.get("/api/v1/alerts", auth=ALICE).status_code == 200
    finally:
        store.close()


@pytest.mark.parametrize("trusted", [False, True])
def test_x_forwarded_for_is_believed_only_from_configured_proxies(tmp_path, trusted):
    """A client could name itself in X-Forwarded-For and escape the login throttle; only a
    proxy listed in http.trusted_proxies is believed."""
    import httpx

    from ..support.interop import free_tcp_port, free_udp_port
    from ..support.server import ADMIN as SERVER_ADMIN
    from ..support.server import start_server

    http = free_tcp_port()
    env = {"SLUICE_HTTP__TRUSTED_PROXIES": '["127.0.0.1"]'} if trusted else {}
    proc = start_server(tmp_path, http, free_udp_port(), **env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=10) as c:
            for i in range(5):
                r = c.get("/api/v1/me", auth=(SERVER_ADMIN[0], "wrong-password"),
                          headers={"X-Forwarded-For": f"198.51.100.{i}"})
                assert r.status_code == 401
            r = c.get("/api/v1/me", auth=(SERVER_ADMIN[0], "wrong-password"), headers={"X-Forwarded-For": "198.51.100.9"})
            # not trusted: all six came from 127.0.0.1, the sixth waits; trusted: six addresses
            assert r.status_code == (401 if trusted else 429), r.text
    finally:
        proc.terminate()
        proc.wait(20)


def test_flows_timed_outside_retention_or_in_the_future_are_dropped_and_counted(tmp_path):
    """Fuzzed exporters left day tables from 1970 to 9999 that retention never reached: flows
    outside [now - retention, now + 1 day], or ending before they start, are dropped and
    counted; the others are stored."""
    from sluice.config import load
    from sluice.flows.schema import FlowBatch
    from sluice.ingest import Ingest

    counters = Counters()
    ingest = Ingest(load(None, **{"data_dir": str(tmp_path / "var"), "sessions.workers": 1}), counters)
    now = int(time.time() * 1000)
    day = 86_400_000
    starts = np.array([now - 1000, 0, now + 3 * day, now - 31 * day, now - 500, 253_402_300_799_000, now - 2000])
    ends = np.array([now - 900, 5000, now + 3 * day, now - 31 * day + 10, now - 800, 253_402_300_799_000, now + day // 2])
    ingest(FlowBatch.build(7, time_start_ms=starts, time_end_ms=ends, src_port=np.arange(1000, 1007), dst_port=80,
                           protocol=6, bytes=100, packets=1, sampling_rate=1))
    ingest.maintenance_round(retention=False)
    assert ingest.store.stats().rows == 2  # the first, and the one ending within the next day
    assert counters.get("flows_out_of_range_total", reason="future") == 2
    assert counters.get("flows_out_of_range_total", reason="past") == 2
    assert counters.get("flows_out_of_range_total", reason="start_after_end") == 1
    ingest.stop()


def test_a_full_disk_under_the_state_database_answers_507_in_one_line(tmp_path):
    """It answered a bare 500. SQLite's page limit makes the same error a full disk does."""
    from sqlalchemy import event, text

    app, users, store = make_app(tmp_path)
    engine = users.db.engine
    with engine.connect() as conn:
        pages = conn.execute(text("PRAGMA page_count")).scalar()

    @event.listens_for(engine, "connect")
    def _full(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    engine.dispose()  # the pooled connections go; new ones have no room to grow
    with TestClient(app) as client:
        r = None
        for i in range(200):  # until the pages are used up
            r = client.post("/api/v1/alert-definitions", auth=ALICE, json={
                "title": f"definition {i} " + "x" * 150, "metric": "bytes_sent", "entity": "host", "threshold": 1})
            if r.status_code != 201:
                break
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"] and "\n" not in r.json()["detail"]
    store.close()



def test_responses_carry_security_headers_and_there_is_no_swagger_from_a_cdn(api):
    client, _ = api
    for r in (client.get("/login"), client.get("/api/v1/me", auth=ALICE), client.get("/static/sluice.js")):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in client.get("/login").text  # no inline script for the policy to refuse
    assert client.get("/api/docs").status_code == 404
    assert client.get("/api/openapi.json").json()["info"]["title"] == "Sluice"
    assert client.get("/users", auth=ALICE).status_code == 403
    assert client.get("/users", auth=ADMIN).status_code == 200


def test_metrics_may_need_a_scrape_token(tmp_path):
    from sluice.http.app import create_app

    _, users, store = make_app(tmp_path)
    token = "scrape-token-0123456789"
    counters = Counters()
    counters.inc("datagrams_total", 3, exporter="192.0.2.1", proto="ipfix")
    with TestClient(create_app(counters, users, [], store, metrics_token=token)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "sluice_" in r.text
        assert client.get("/healthz").status_code == 200  # liveness stays open
    store.close()
