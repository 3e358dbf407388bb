"""Trust for HTTPS clients: the public CAs, plus ``KVLINK_CA_BUNDLE`` when it is set."""

from __future__ import annotations

import functools
import ssl
import tempfile
from pathlib import Path


@functools.cache
def ssl_context(extra_bundle: str | None) -> ssl.SSLContext | bool:
    """For httpx: the default trust, widened by the extra bundle."""
    if not extra_bundle:
        return True
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=extra_bundle)
    return context


@functools.cache
def combined_bundle(extra_bundle: str | None) -> str | bool:
    """For azure-core (requests), which takes one CA file: public CAs plus the extra ones."""
    if not extra_bundle:
        return True
    import certifi

    combined = Path(tempfile.gettempdir()) / f"kvlink-ca-{abs(hash(extra_bundle)):x}.pem"
    combined.write_text(Path(certifi.where()).read_text() + "\n" + Path(extra_bundle).read_text())
    return str(combined)
