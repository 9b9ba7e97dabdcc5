"""TLS contexts for the TLS listeners, from ``service.tls`` (README, "TCP and TLS").

One server context (the certificate sipguard presents; with ``verify_clients``, a client must present
one that chains to ``ca``) and one client context (for connections sipguard opens: the peer's
certificate must chain to ``ca``, or to the system's CAs without one, and name the address or host
connected to).  A reload builds both again and refuses a certificate that does not load, whose key
does not match, or that is expired or not valid yet; the contexts in use stay then.
"""

from __future__ import annotations

import ssl
import time

from ..policy.model import Tls

__all__ = ["contexts", "problems", "certificate_dates", "certificate_names"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def certificate_dates(path: str) -> tuple[float, float]:
    """notBefore and notAfter of the first certificate in a PEM file, as epoch seconds.  Raises ssl.SSLError,
    OSError."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.load_verify_locations(cafile=path)  # decoded by OpenSSL, read back through a public API
    certs = probe.get_ca_certs()
    if not certs:
        raise ssl.SSLError(f"{path}: no certificate in it")
    cert = certs[0]
    return ssl.cert_time_to_seconds(str(cert["notBefore"])), ssl.cert_time_to_seconds(str(cert["notAfter"]))


def problems(tls: Tls, now: float | None = None) -> list[tuple[str, str]]:
    """What is wrong with ``service.tls`` for a TLS listener: (key, message) pairs, empty when it serves."""
    out: list[tuple[str, str]] = []
    if not tls.cert or not tls.key:
        return [("cert" if not tls.cert else "key", "a tls: listener needs service.tls.cert and service.tls.key")]
    now = time.time() if now is None else now
    try:
        not_before, not_after = certificate_dates(tls.cert)
    except (OSError, ssl.SSLError, ValueError) as err:
        return [("cert", f"cannot read the certificate {tls.cert}: {err}")]
    if now > not_after:
        out.append(("cert", f"the certificate {tls.cert} expired on {time.strftime('%Y-%m-%d', time.gmtime(not_after))}"))
    elif now < not_before:
        out.append(("cert", f"the certificate {tls.cert} is not valid before "
                            f"{time.strftime('%Y-%m-%d', time.gmtime(not_before))}"))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as err:
        out.append(("key", f"the key {tls.key} does not load with {tls.cert}: {err}"))
    if tls.ca:
        try:
            ssl.create_default_context(cafile=tls.ca)
        except (OSError, ssl.SSLError) as err:
            out.append(("ca", f"cannot read the CAs {tls.ca}: {err}"))
    elif tls.verify_clients:
        out.append(("ca", "verify_clients needs the CAs the clients' certificates chain to (service.tls.ca)"))
    return out


def contexts(tls: Tls) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server and the client context.  Raises ssl.SSLError / OSError (``problems`` says why first)."""
    assert tls.cert and tls.key
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca)
    server.load_cert_chain(tls.cert, tls.key)
    server.verify_mode = ssl.CERT_REQUIRED if tls.verify_clients else ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    client.load_cert_chain(tls.cert, tls.key)  # a peer that verifies its clients gets ours
    for ctx in (server, client):
        ctx.minimum_version = _VERSIONS[tls.min_version]
    return server, client


def certificate_names(cert: dict[str, object] | None) -> list[str]:
    """The names a peer's verified certificate carries: its subject's commonName, then every DNS, IP
    and URI subjectAltName (what an account's ``match.tls_names`` is compared with)."""
    if not cert:
        return []
    names: list[str] = []
    subject = cert.get("subject")
    if isinstance(subject, tuple):
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName":
                    names.append(str(value))
    alt = cert.get("subjectAltName")
    if isinstance(alt, tuple):
        for kind, value in alt:
            if kind in ("DNS", "IP Address", "URI"):
                names.append(str(value))
    return names
