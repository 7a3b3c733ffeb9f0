"""The secrets one vodflow installation needs, generated into the data directory when not set.

With the embedded defaults nobody has to invent keys: the first start writes
``DATA_DIR/secrets.json`` (mode 0600) with a VOD SecretId/SecretKey pair (the embedded engine
accepts it and vodflow's client signs with it), a callback token and a Standard Webhooks secret.
Settings given in ``VODFLOW_*`` or ``vodflow.toml`` always win over the file.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.store.db import ensure_private_dir


@dataclass(frozen=True)
class Keys:
    vod_secret_id: str
    vod_secret_key: str
    callback_token: str
    webhook_secret: str


def _generate() -> dict[str, str]:
    return {
        "vod_secret_id": "AKID" + secrets.token_hex(16),
        "vod_secret_key": secrets.token_urlsafe(24),
        "callback_token": secrets.token_urlsafe(24),
        "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
    }


def load_keys(settings: Settings) -> Keys:
    """The effective secrets: settings first, then DATA_DIR/secrets.json (created if missing)."""
    path = Path(settings.data_dir) / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    missing = {k: v for k, v in _generate().items() if k not in stored}
    if missing:
        stored.update(missing)
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)

    def pick(name: str) -> str:
        value = getattr(settings, name)
        return value.get_secret_value() if value is not None else stored[name]

    return Keys(
        vod_secret_id=pick("vod_secret_id"),
        vod_secret_key=pick("vod_secret_key"),
        callback_token=pick("callback_token"),
        webhook_secret=pick("webhook_secret"),
    )
