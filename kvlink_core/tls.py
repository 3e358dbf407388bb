"""Trust for HTTPS clients: the public CAs, plus ``KVLINK_CA_BUNDLE`` when it is set."""

from __future__ import annotations

import functools
import ssl
import tempfile
from pathlib import Path
from typing import Any


@functools.cache
def ssl_context(extra_bundle: str | None) -> ssl.SSLContext:
    """The public CAs (certifi), widened by the extra bundle; built once, shared by every client."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    if extra_bundle:
        context.load_verify_locations(cafile=extra_bundle)
    return context


def shared_session(extra_bundle: str | None, *, pool_size: int, trust_env: bool) -> Any:
    """One requests session for many azure-core clients (a SecretClient per vault).

    Given a CA file, urllib3 re-reads it for every new connection -- about 35 ms of CPU
    for the public bundle -- so an audit opening a connection per vault spent seconds
    parsing certificates. This session verifies with one preloaded SSLContext instead.
    """
    import requests
    from requests.adapters import HTTPAdapter

    context = ssl_context(extra_bundle)

    class _PreloadedTrust(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn, url, verify, cert)
            if verify:  # the context holds the CAs already: do not make urllib3 load a file again
                conn.ca_certs = None
                conn.ca_cert_dir = None

    session = requests.Session()
    session.trust_env = trust_env
    session.mount("https://", _PreloadedTrust(pool_connections=pool_size, pool_maxsize=pool_size))
    return session


@functools.cache
def combined_bundle(extra_bundle: str | None) -> str | bool:
    """For azure-core (requests), which takes one CA file: public CAs plus the extra ones."""
    if not extra_bundle:
        return True
    import certifi

    combined = Path(tempfile.gettempdir()) / f"kvlink-ca-{abs(hash(extra_bundle)):x}.pem"
    combined.write_text(Path(certifi.where()).read_text() + "\n" + Path(extra_bundle).read_text())
    return str(combined)


def azure_transport_options(extra_bundle: str | None) -> dict[str, object]:
    """Options for every azure-core client kvlink builds (Key Vault, Table storage, Event Grid).

    requests re-reads the proxy environment on every request when it trusts the environment,
    which costs a scan of os.environ per call -- noticeable across an audit's thousands of
    calls. kvlink trusts it only when a proxy is actually configured.
    """
    import os

    proxied = any(
        os.environ.get(name)
        for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    )
    return {"connection_verify": combined_bundle(extra_bundle), "use_env_settings": proxied}
