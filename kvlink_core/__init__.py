"""kvlink: keep Azure DevOps variable groups linked to Azure Key Vault in step with the vault.

Importing this package is cheap on purpose (cold starts): the Azure SDKs load when
first used. Triggers call the entry points in :mod:`kvlink_core.app`.
"""

from .errors import (
    ConfigError,
    InvalidEventError,
    KvLinkError,
    LeaseBusyError,
    RequestError,
    TransientError,
    UnwantedEventError,
    UpstreamError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InvalidEventError",
    "KvLinkError",
    "LeaseBusyError",
    "RequestError",
    "TransientError",
    "UnwantedEventError",
    "UpstreamError",
    "__version__",
]
