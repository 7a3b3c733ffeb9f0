"""Authenticating requests to the engine as Tencent's v2 API does (signature method v1).

Checked in this order, each failure an envelope with its common code:

1. ``SecretId`` names a configured key pair, else **4104** (also when it is missing);
2. ``Signature`` verifies (HmacSHA1 or HmacSHA256, per ``SignatureMethod``) over the method, the
   host the client addressed (the ``Host`` header, with its port), the path and every other
   parameter, else **4100**; so does a POST carrying a value that starts with ``@``, which
   signing leaves out (see ``orchestrator.vod.signing``);
3. ``Timestamp`` is within ``engine_timestamp_window`` seconds (default 300) of the engine's
   clock, else **4500** (the replay code: Tencent's common codes list "Timestamp too far from
   server time" under 4500; 4200 "request expired" would fit a late request only);
4. ``Nonce`` was not used by the same SecretId in a request that may still be accepted, else
   **4500**: a Nonce is remembered for the window after the later of its arrival and its
   request's Timestamp (a request dated ahead of the clock stays acceptable that much longer).

A missing or malformed Timestamp or Nonce is an invalid request (**4000**). Nonces are kept in
the database, so a replay is caught whichever process on it receives it; rows older than the
window are pruned, since a request that old fails step 3 anyway.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping

from orchestrator.engine.answers import EngineError
from orchestrator.store import engine as store
from orchestrator.store.db import Database
from orchestrator.vod.signing import verify

_DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
PRUNE_EVERY = 60.0


class Authenticator:
    """The key pairs the engine accepts and its replay window."""

    def __init__(
        self,
        db: Database,
        keys: Mapping[str, str],
        *,
        window: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.keys = dict(keys)
        self.window = window
        self.clock = clock
        self._pruned_at = 0.0

    async def check(self, params: Mapping[str, str], method: str, host: str, path: str) -> str:
        """The SecretId that signed ``params``, or ``EngineError`` saying what is wrong."""
        secret_id = params.get("SecretId", "")
        secret_key = self.keys.get(secret_id)
        if secret_key is None:
            shown = repr(secret_id) if secret_id else "(none given)"
            raise EngineError(4104, f"SecretId {shown} is not a key of this engine")
        algorithm = params.get("SignatureMethod", "HmacSHA1")
        if algorithm not in ("HmacSHA1", "HmacSHA256"):
            raise EngineError(
                4100, f"SignatureMethod {algorithm!r}: expected HmacSHA1 or HmacSHA256"
            )
        if not params.get("Signature"):
            raise EngineError(4100, "missing parameter Signature")
        if method.upper() == "POST":
            # Signing leaves such values out of a POST (as Tencent's SDK does): refuse them
            # rather than act on parameters anyone on the way could have added.
            unsigned = sorted(name for name, value in params.items() if value.startswith("@"))
            if unsigned:
                raise EngineError(
                    4100,
                    f"parameter {unsigned[0]!r}: a value starting with '@' is not signed in a "
                    "POST; send this request with GET so that every parameter is signed",
                )
        if not verify(params, method, host, path, secret_key):
            raise EngineError(
                4100,
                f"signature mismatch: expected {algorithm} of {method.upper()}{host}{path}?<every "
                "other parameter, sorted> with this SecretId's key (sign for the host the "
                "request is sent to, with its port)",
            )
        timestamp = params.get("Timestamp", "")
        if not _DIGITS.fullmatch(timestamp):
            raise EngineError(
                4000, f"parameter 'Timestamp': expected Unix seconds, got {timestamp!r}"
            )
        now = self.clock()
        skew = int(timestamp) - now
        if abs(skew) > self.window:
            raise EngineError(
                4500,
                f"Timestamp {timestamp} is {abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} "
                f"the engine's clock; allowed: {self.window:g}s either way",
            )
        nonce = params.get("Nonce", "")
        if not _DIGITS.fullmatch(nonce) or int(nonce) <= 0:
            raise EngineError(
                4000, f"parameter 'Nonce': expected a positive integer, got {nonce!r}"
            )
        async with self.db.transaction() as conn:
            fresh = await store.use_nonce(conn, secret_id, nonce, now, self.window, int(timestamp))
            if now - self._pruned_at > PRUNE_EVERY:
                self._pruned_at = now
                await store.forget_nonces(conn, now - self.window)
        if not fresh:
            raise EngineError(
                4500,
                f"Nonce {nonce} was already used with this SecretId by a request still within "
                f"the {self.window:g}s window (a replayed request?)",
            )
        return secret_id
