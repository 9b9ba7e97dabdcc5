"""TLS contexts for the TLS listeners, from ``service.tls`` (README, "TCP and TLS").

One server context (the certificate sipguard presents; with ``verify_clients``, a client must present
one that chains to ``ca``) and one client context (for connections sipguard opens: the peer's
certificate must chain to ``ca``, or to the system's CAs without one, and name the address or host
connected to).  A reload builds both again and refuses a certificate that does not load, whose key
does not match, or that is expired or not valid yet; the contexts in use stay then.
"""

from __future__ import annotations

import calendar
import ssl
import time

from ..policy.model import Tls

__all__ = ["contexts", "problems", "certificate_dates", "certificate_names"]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at ``at``: (tag, start of its content, end of its content)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[at:at + n], "big")
        at += n
    return tag, at, at + length


def _asn1_time(tag: int, text: str) -> float:
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280 §4.1.2.5.1)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    return calendar.timegm(time.strptime(text.rstrip("Z"), "%Y%m%d%H%M%S"))


def certificate_dates(path: str) -> tuple[float, float]:
    """notBefore and notAfter of the first certificate in a PEM file, as epoch seconds (RFC 5280 §4.1: the
    validity after the version, serial number, signature algorithm and issuer).  Raises OSError, ValueError."""
    with open(path, encoding="ascii", errors="replace") as f:
        pem = f.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in pem or end not in pem:
        raise ValueError("no PEM certificate in it")
    der = ssl.PEM_cert_to_DER_cert(pem[pem.index(begin):pem.index(end) + len(end)])
    _tag, cert, _end = _der(der, 0)  # Certificate
    _tag, tbs, _end = _der(der, cert)  # TBSCertificate
    at = tbs
    tag, _start, after = _der(der, at)
    if tag == 0xA0:  # [0] version
        at = after
    for _field in range(3):  # serialNumber, signature, issuer
        _tag, _start, at = _der(der, at)
    _tag, validity, _end = _der(der, at)
    tag1, s1, e1 = _der(der, validity)
    tag2, s2, e2 = _der(der, e1)
    return _asn1_time(tag1, der[s1:e1].decode("ascii")), _asn1_time(tag2, der[s2:e2].decode("ascii"))


def problems(tls: Tls, now: float | None = None) -> list[tuple[str, str]]:
    """What is wrong with ``service.tls`` for a TLS listener: (key, message) pairs, empty when it serves."""
    out: list[tuple[str, str]] = []
    if not tls.cert or not tls.key:
        return [("cert" if not tls.cert else "key", "a tls: listener needs service.tls.cert and service.tls.key")]
    now = time.time() if now is None else now
    try:
        not_before, not_after = certificate_dates(tls.cert)
    except (OSError, ValueError, IndexError) as err:
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
