"""Certificates made by a test with the openssl command: a CA, and leaves it signed (valid, expired, or
signed by another CA), each with a common name and subjectAltNames."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args[:2])} failed: {proc.stderr}")


class Ca:
    """A certificate authority in ``folder``: ``ca.crt``, and ``leaf(name, ...)`` for certificates it signs."""

    def __init__(self, folder: Path, name: str = "sipguard test CA") -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = folder / "ca.crt", folder / "ca.key"
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(self.key), "-out", str(self.cert), "-days", "30", "-subj", f"/CN={name}", cwd=folder)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("1000\n")
        (folder / "ca.cnf").write_text(
            "[ca]\ndefault_ca = here\n[here]\ndir = .\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
            "default_md = sha256\npolicy = anything\ncopy_extensions = copy\nunique_subject = no\n"
            "[anything]\ncommonName = supplied\n")

    def leaf(self, name: str, sans: tuple[str, ...] = ("IP:127.0.0.1",), *, expired: bool = False) -> Leaf:
        """A certificate for ``name`` (its CN) with ``sans`` (``IP:...``, ``DNS:...``); valid for 30 days from
        now, or ``expired`` (valid in 2020 only)."""
        cert, key, csr = self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / f"{name}.csr"
        _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             str(key), "-out", str(csr), "-subj", f"/CN={name}", "-addext", f"subjectAltName={','.join(sans)}",
             cwd=self.dir)
        dates = ("-startdate", "20200101000000Z", "-enddate", "20200201000000Z") if expired else ("-days", "30")
        _run("ca", "-batch", "-config", "ca.cnf", "-cert", str(self.cert), "-keyfile", str(self.key), "-in", str(csr),
             "-out", str(cert), "-notext", *dates, cwd=self.dir)
        return Leaf(cert, key)
