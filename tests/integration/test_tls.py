"""TLS against a running sipguard: SIPp behind stunnel (Debian's SIPp has no TLS), Python's ssl for the
handshakes a test must control, certificates made by the test (certs.py)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from helpers import request
from sipguard.sip import Request, Response, parse
from sipguard.transport.stream import Framer

from .answering import StreamUas
from .certs import Ca, Leaf
from .conftest import TEST_POLICY, UAC_IP, UAS_IP, Sipguard, Sipp, free_tcp_port, require, until

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
TLS_POLICY = TEST_POLICY.replace(
    'listen: ["udp:127.0.0.1:{sip_port}"]',
    'listen: ["udp:127.0.0.1:{sip_port}", "tls:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{tcp_port}"]\n'
    '  tls: {{cert: "{cert}", key: "{key}", ca: "{ca}", verify_clients: {verify}}}').replace(
    'uas: "sip:127.0.0.3:{uas_port}"', 'uas: "{upstream}"')
assert "tls:127.0.0.1" in TLS_POLICY and "{upstream}" in TLS_POLICY


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    require("openssl")
    return Ca(tmp_path / "ca")


def _start(factory, ca: Ca, *, verify: bool = True, upstream: str = "", extra: str = "",  # type: ignore[no-untyped-def]
           server: Leaf | None = None) -> Sipguard:
    server = server or ca.leaf("sipguard", ("IP:127.0.0.1", "DNS:sipguard.test"))
    tcp_port, uas_port = free_tcp_port(), free_tcp_port()
    upstream = (upstream or "sip:127.0.0.3:{uas_port};transport=tcp").format(uas_port=uas_port)
    sg = factory(TLS_POLICY + extra, cert=server.cert, key=server.key, ca=ca.cert, verify=str(verify).lower(),
                 tcp_port=tcp_port, upstream=upstream, uas_port=uas_port)
    sg.tcp_port = tcp_port
    return sg  # type: ignore[no-any-return]


def _client_context(ca: Ca, leaf: Leaf | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    return ctx


def _tls_connect(sg: Sipguard, ctx: ssl.SSLContext, source: str = UAC_IP) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind((source, 0))
    raw.settimeout(10)
    raw.connect(("127.0.0.1", sg.sip_port))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _exchange(s: ssl.SSLSocket, data: bytes, want: int = 1) -> list[bytes]:
    """Send ``data``, return the first ``want`` messages that come back."""
    s.sendall(data)
    framer = Framer(65536)
    got: list[bytes] = []
    while len(got) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += framer.feed(chunk)
    return got


def _options(sg: Sipguard, n: int = 1) -> bytes:
    return request("OPTIONS", ruri=f"sip:127.0.0.1:{sg.sip_port};transport=tls", call_id=f"tls-probe-{n}",
                   branch=f"z9hG4bK-tls-{n}", via_host=f"{UAC_IP}:5061")


def _refused(sg: Sipguard, ctx: ssl.SSLContext) -> bool:
    """Whether sipguard refuses this client: the handshake fails, or the connection is closed before any answer
    (with TLS 1.3 the client may finish its side of the handshake before the server checks its certificate)."""
    try:
        s = _tls_connect(sg, ctx)
        try:
            return _exchange(s, _options(sg)) == []
        finally:
            s.close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def test_calls_over_tls_through_stunnel(sipguard_factory, sipp: Sipp, ca: Ca, tmp_path: Path) -> None:
    """SIPp (TCP) -> stunnel, presenting the PBX's certificate -> sipguard's TLS listener -> TCP -> SIPp UAS."""
    stunnel = require("stunnel4")
    sg = _start(sipguard_factory, ca)
    client = ca.leaf("pbx", ("IP:127.0.0.2",))
    accept = free_tcp_port()
    conf = tmp_path / "stunnel.conf"
    conf.write_text(f"foreground = yes\npid =\n[sip]\nclient = yes\naccept = {UAC_IP}:{accept}\n"
                    f"connect = 127.0.0.1:{sg.sip_port}\nlocal = {UAC_IP}\ncert = {client.cert}\nkey = {client.key}\n"
                    f"CAfile = {ca.cert}\nverifyChain = yes\ncheckIP = 127.0.0.1\n")
    tunnel = subprocess.Popen([stunnel, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert until(lambda: _listening(UAC_IP, accept), 10)
        uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "t1", "-m", "200")  # type: ignore[attr-defined]
        run = sipp.uac("basic/uac.xml", accept, "-t", "t1", "-s", CALLEE, "-r", "50", "-m", "200", "-d", "100",
                       target_host=UAC_IP)
        assert run.stat("Successful call") == 200 and run.stat("Failed call") == 0, run.errors
        assert sipp.wait(uas) == 0
    finally:
        tunnel.terminate()
        tunnel.wait(timeout=10)
    assert sg.wait_metric("sipguard_dialogs", 0) == 0
    m = sg.metrics()
    assert m['sipguard_dialogs_ended_total{reason="bye"}'] == 200
    # SIPp's one connection, and the one stunnel made for the readiness probe
    assert m['sipguard_connections_made_total{direction="inbound",transport="tls"}'] == 2
    assert m["sipguard_internal_errors_total"] == 0


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_verify_clients_refuses_a_client_without_a_good_certificate(sipguard_factory, ca: Ca, tmp_path: Path) -> None:
    sg = _start(sipguard_factory, ca, verify=True)
    other = Ca(tmp_path / "other", "some other CA")
    assert _refused(sg, _client_context(ca, None))  # no certificate
    assert _refused(sg, _client_context(ca, other.leaf("pbx", ("IP:127.0.0.2",))))  # not from service.tls.ca
    good = _tls_connect(sg, _client_context(ca, ca.leaf("pbx", ("IP:127.0.0.2",))))
    try:
        (reply,) = _exchange(good, _options(sg))
        assert parse(reply).status == 200  # type: ignore[union-attr]
        assert good.getpeercert()["subject"] == ((("commonName", "sipguard"),),)  # what sipguard presents
    finally:
        good.close()
    assert sg.alive()


def test_without_verify_clients_a_client_needs_no_certificate(sipguard_factory, ca: Ca) -> None:
    sg = _start(sipguard_factory, ca, verify=False)
    s = _tls_connect(sg, _client_context(ca, None))
    try:
        (reply,) = _exchange(s, _options(sg))
        assert parse(reply).status == 200  # type: ignore[union-attr]
    finally:
        s.close()


def test_an_account_is_matched_by_its_tls_client_certificate(sipguard_factory, ca: Ca) -> None:
    """An address in no account's sources: its certificate's name (match.tls_names) says whose calls they are."""
    extra = ("  certified:\n    kind: hosted\n    match: {{tls_names: [\"pbx.customer.test\"]}}\n    upstream: uas\n"
             "    users: [{{name: \"A\", sip_users: [\"2000\"], site: hq}}]\n"
             "    numbers: [{{range: \"+3228807300-+3228807309\", site: hq}}]\n"
             "    sites: {{hq: {{address: \"Rue de la Loi 16, 1000 Brussels\", emergency_caller_id: \"+3228807300\"}}}}\n")
    sg = _start(sipguard_factory, ca, verify=True, extra=extra)
    uas = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    uas.bind((UAS_IP, sg.uas_port))  # type: ignore[attr-defined]
    uas.listen(4)
    invite = request(ruri=f"sip:{CALLEE}@127.0.0.1", via_host="127.0.0.5:5061", from_user="+3228807301")
    try:
        named = _tls_connect(sg, _client_context(ca, ca.leaf("pbx.customer.test", ("DNS:pbx.customer.test",))),
                             source="127.0.0.5")
        (trying,) = _exchange(named, invite)
        assert parse(trying).status == 100  # type: ignore[union-attr]  # admitted: on its way to the UAS
        uas.settimeout(10)
        conn, _addr = uas.accept()
        conn.settimeout(10)
        forwarded = Framer(65536).feed(conn.recv(65536))
        assert forwarded and isinstance(parse(forwarded[0]), Request)
        status, calls = sg.http("/calls?account=certified")  # the call holds a channel of that account
        assert status == 200 and "call-1@127.0.0.2" in calls
        conn.close()
        named.close()
        stranger = _tls_connect(sg, _client_context(ca, ca.leaf("someone.else.test", ("DNS:someone.else.test",))),
                                source="127.0.0.6")
        (refused,) = _exchange(stranger, invite.replace(b"127.0.0.5", b"127.0.0.6"))
        assert parse(refused).status == 403  # type: ignore[union-attr]  # an unknown source, certificate or not
        stranger.close()
    finally:
        uas.close()
    (refusal,) = sg.decisions()
    assert refusal["reason"] == "unknown source" and refusal["evidence"] == {"source": "127.0.0.6"}


def test_an_expired_certificate_is_refused_at_reload_and_the_old_one_kept(sipguard_factory, ca: Ca) -> None:
    first = ca.leaf("sipguard", ("IP:127.0.0.1",))
    sg = _start(sipguard_factory, ca, verify=False, server=first)
    expired = ca.leaf("expired", ("IP:127.0.0.1",), expired=True)
    first.cert.write_bytes(expired.cert.read_bytes())  # the operator copies an old certificate over it
    first.key.write_bytes(expired.key.read_bytes())
    status, body = sg.http("/reload", "POST")
    assert status == 400 and "service.tls.cert" in body and "expired on 2020-02-01" in body
    s = _tls_connect(sg, _client_context(ca, None))  # the old certificate is still presented
    assert s.getpeercert()["subject"] == ((("commonName", "sipguard"),),)
    s.close()
    renewed = ca.leaf("sipguard-renewed", ("IP:127.0.0.1",))
    first.cert.write_bytes(renewed.cert.read_bytes())
    first.key.write_bytes(renewed.key.read_bytes())
    assert sg.http("/reload", "POST") == (200, "reloaded\n")
    s = _tls_connect(sg, _client_context(ca, None))  # a new connection gets the renewed one
    assert s.getpeercert()["subject"] == ((("commonName", "sipguard-renewed"),),)
    s.close()


def test_a_sips_upstream_is_reached_over_tls_and_its_certificate_checked(sipguard_factory, ca: Ca) -> None:
    uas_leaf = ca.leaf("carrier", (f"IP:{UAS_IP}",))
    uas_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    uas_ctx.load_cert_chain(str(uas_leaf.cert), str(uas_leaf.key))
    sg = _start(sipguard_factory, ca, verify=False, upstream="sips:127.0.0.3:{uas_port}")
    uas = StreamUas(UAS_IP, sg.uas_port, uas_ctx, tag="tls-uas")  # type: ignore[attr-defined]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((UAC_IP, 0))
    client.settimeout(10)
    try:
        client.sendto(request(ruri=f"sip:{CALLEE}@127.0.0.1", via_host=f"{UAC_IP}:{client.getsockname()[1]}",
                              rport=True), ("127.0.0.1", sg.sip_port))
        statuses: list[int] = []
        while 486 not in statuses:
            msg = parse(client.recvfrom(65536)[0])
            assert isinstance(msg, Response)
            statuses.append(msg.status)
        assert until(lambda: any(d.startswith(b"ACK") for d in uas.got), 5)
    finally:
        client.close()
        uas.close()
    invite = parse(next(d for d in uas.got if d.startswith(b"INVITE")))
    assert invite.vias[0].transport.upper() == "TLS"
    rr = [v for k, _n, v in invite.headers if k == "record-route"]
    assert ";transport=tls;" in rr[0] and "transport" not in rr[1]  # RFC 5658: TLS towards the UAS, UDP back
    assert sg.metric('sipguard_connections_made_total{direction="outbound",transport="tls"}') == 1


def test_a_tls_handshake_that_never_starts_is_closed_at_its_deadline(sipguard_factory, ca: Ca) -> None:
    """A TCP connection to the TLS port that sends nothing: closed after handshake_timeout_s (5 s, the default)."""
    sg = _start(sipguard_factory, ca, verify=False)
    raw = socket.create_connection(("127.0.0.1", sg.sip_port), timeout=10)
    t0 = time.monotonic()
    try:
        raw.settimeout(10)
        assert raw.recv(16) == b""  # closed by sipguard
        assert 4.5 <= time.monotonic() - t0 < 8
    finally:
        raw.close()
    s = _tls_connect(sg, _client_context(ca, None))  # and the listener still serves
    (reply,) = _exchange(s, _options(sg))
    assert parse(reply).status == 200  # type: ignore[union-attr]
    s.close()
