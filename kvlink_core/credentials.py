"""One credential per process, chosen deterministically.

In Azure: the user-assigned managed identity named by ``AZURE_CLIENT_ID``. On a
laptop: ``DefaultAzureCredential`` (``az login``). Against local stand-ins
(``KVLINK_EMULATOR=1``): a static token the stand-ins accept.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential

    from .settings import Settings

# The Azure DevOps application id: Entra tokens for it are accepted by dev.azure.com.
DEVOPS_SCOPE = "499b84ac-1321-427f-aa17-267ca6975798/.default"
EMULATOR_TOKEN = "kvlink-emulator-token"  # noqa: S105 -- a fixed token only the local stand-ins accept


class StaticTokenCredential:
    """A credential that always returns the same token (local stand-ins only)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self._token, int(time.time()) + 3600)


@functools.cache
def get_credential(settings: Settings) -> TokenCredential:
    """The process's credential; cached so token caches are shared by every client."""
    if settings.emulator:
        return StaticTokenCredential(EMULATOR_TOKEN)
    if settings.running_in_azure and settings.azure_client_id:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=settings.azure_client_id)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=settings.azure_client_id)
