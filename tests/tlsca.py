"""A throw-away certificate authority for the TLS tests (openssl CLI, EC keys: fast)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "kidsafe-test-ca") -> None:
        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.cert = folder / f"{name}.pem"
        self.key = folder / f"{name}.key"
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", f"/CN={name}", cwd=folder)

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        """(certificate, key) for CN; servers get SANs for 127.0.0.1 and localhost."""
        stem = f"{self.name}-{cn}"
        key, csr, crt = (self.dir / f"{stem}.{x}" for x in ("key", "csr", "pem"))
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=self.dir)
        ext = self.dir / f"{stem}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server
                       else "extendedKeyUsage=clientAuth\n")
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
             "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext),
             cwd=self.dir)
        return crt, key
