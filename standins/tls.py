"""A throwaway certificate authority for the HTTPS stand-ins.

The real Azure SDKs refuse bearer tokens over plain HTTP, so the stand-ins speak
TLS with a certificate from a CA that exists only for this run. Clients trust it
through ``KVLINK_CA_BUNDLE`` -- nothing is added to the system trust store.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme


class ThrowawayCA:
    """One CA per run; a server certificate for loopback names (and any other address asked for)."""

    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA(organization_name="kvlink stand-ins")
        self._server_cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        directory.mkdir(parents=True, exist_ok=True)
        self.bundle_path = directory / "kvlink-standins-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.bundle_path))

    def server_context(self, *hosts: str) -> ssl.SSLContext:
        """A server context; ``hosts`` (e.g. ``127.0.0.7``) get a certificate that names them too."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1", *hosts) if hosts else self._server_cert
        cert.configure_cert(context)
        return context
