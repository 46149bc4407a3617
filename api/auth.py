"""Bearer API keys: who is asking, as the owner id their batches are stored under."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SettingsDep
from shared import keys
from shared.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="One of PROMPTBATCH_API_KEYS.")


def owner_id(api_key: str) -> str:
    """The owner a key's batches are stored under: a hash of the key, never the key itself."""
    return "key_" + hashlib.sha256(api_key.encode()).hexdigest()[:32]


async def require_owner(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's owner id; 401 unless the bearer key is one of the configured keys.

    Without configured keys every caller is the one public owner. The presented key is
    compared with every configured key in constant time, so timing tells nothing about them.
    """
    configured = settings.api_key_list
    if not configured:
        return keys.PUBLIC_OWNER
    if credentials is None:
        raise Unauthorized("Send an API key as `Authorization: Bearer <key>`.")
    presented = _digest(credentials.credentials)
    matched: str | None = None
    for key in configured:  # no early exit: every key is compared, each in constant time
        if hmac.compare_digest(presented, _digest(key)):
            matched = key
    if matched is None:
        raise Unauthorized("The API key is not valid.")
    return owner_id(matched)


def _digest(key: str) -> bytes:
    """Equal-length digests, so the comparison does not even reveal a key's length."""
    return hashlib.sha256(key.encode()).digest()


OwnerDep = Annotated[str, Depends(require_owner)]
