"""Self-signed certificates for the TLS tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def make_certificate(
    folder: Path, name: str, *, common_name: str | None = None, ip: str | None = "127.0.0.1"
) -> tuple[Path, Path]:
    """A self-signed certificate `NAME.pem` (CN `common_name`, else `name`; for `ip` unless
    None) and its key `NAME.key`, made with openssl; skips the test without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subject = ["-subj", f"/CN={common_name or name}"]
    alt_name = ["-addext", f"subjectAltName=IP:{ip}"] if ip is not None else []
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            *subject,
            *alt_name,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key
