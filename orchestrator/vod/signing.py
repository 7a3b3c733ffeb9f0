"""Tencent "signature method v1", which signs every v2 API request; client and engine share it.

String to sign: ``METHOD + host + path + "?" + query``, where query is every parameter except
``Signature``, with ``_`` in names replaced by ``.``, sorted by name, joined as ``name=value`` with
``&`` and values *not* URL-encoded. Signature: base64(HMAC-SHA1 or HMAC-SHA256 of it with the
secret key). Values are ``str()``-ed as Tencent's SDK does (ints as decimal).

Deliberate choices, checked against ``qcloudapi-sdk-python`` 2.0.15 (``QcloudApi/common/sign.py``):

* For POST the SDK leaves out of the string to sign every parameter whose value starts with ``@``
  (a relic of PHP cURL file uploads). ``string_to_sign`` mirrors that, so a request the SDK signed
  verifies here. Such a parameter is therefore *not authenticated*: ``signed_params`` refuses to
  build a POST carrying one (use GET), and the engine refuses a POST carrying one (4100).
* When two names collide after the ``_``→``.`` swap (``a_b`` and ``a.b``), the later one in the
  mapping's order wins, exactly as in the SDK.
* The method is upper-cased before use; the SDK upper-cases it in the string but compares ``POST``
  case-sensitively for the ``@`` rule, a difference no real client (which sends upper case) sees.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

SignatureMethod = Literal["HmacSHA1", "HmacSHA256"]
HttpMethod = Literal["GET", "POST"]

DEFAULT_PATH: Final = "/v2/index.php"
DEFAULT_ALGORITHM: Final[SignatureMethod] = "HmacSHA1"

# hashlib names, which hmac.new accepts as its digest.
_DIGESTS: Final[Mapping[str, str]] = {"HmacSHA1": "sha1", "HmacSHA256": "sha256"}

ParamValue = str | int | float


def _wire(value: object) -> str:
    """A parameter value as it is signed and sent (the SDK's ``'%s' % value``)."""
    return value if isinstance(value, str) else str(value)


def string_to_sign(
    params: Mapping[str, object], method: str, host: str, path: str = DEFAULT_PATH
) -> str:
    """The exact text that is HMAC-ed; ``Signature`` itself is never part of it."""
    verb = method.upper()
    named: dict[str, str] = {}
    for name, value in params.items():
        if name == "Signature":
            continue
        text = _wire(value)
        if verb == "POST" and text.startswith("@"):
            continue  # mirrors the SDK; see the module docstring
        named[name.replace("_", ".")] = text
    query = "&".join(f"{name}={named[name]}" for name in sorted(named))
    return f"{verb}{host}{path}?{query}"


def sign(
    params: Mapping[str, object],
    method: str,
    host: str,
    path: str,
    secret_key: str,
    algorithm: str = DEFAULT_ALGORITHM,
) -> str:
    """The base64 ``Signature`` for ``params`` sent with ``method`` to ``host`` + ``path``."""
    digest = _DIGESTS.get(algorithm)
    if digest is None:
        raise ValueError(f"SignatureMethod {algorithm!r}: expected HmacSHA1 or HmacSHA256")
    message = string_to_sign(params, method, host, path).encode("utf-8")
    mac = hmac.new(secret_key.encode("utf-8"), message, digest).digest()
    return base64.b64encode(mac).decode("ascii")


def signed_params(
    action: str,
    request_params: Mapping[str, ParamValue],
    *,
    secret_id: str,
    secret_key: str,
    region: str,
    timestamp: int,
    nonce: int,
    method: HttpMethod = "GET",
    host: str,
    path: str = DEFAULT_PATH,
    algorithm: SignatureMethod = DEFAULT_ALGORITHM,
    request_client: str | None = None,
) -> dict[str, str]:
    """The complete parameter set to send: common parameters, request parameters, Signature.

    ``timestamp`` and ``nonce`` are arguments so that callers own the clock and the randomness
    (a positive ``nonce``; the server rejects a reused one within its window with 4500).
    """
    if nonce <= 0:
        raise ValueError(f"Nonce {nonce}: expected a positive integer")
    params: dict[str, str] = {name: _wire(value) for name, value in request_params.items()}
    params.update(
        {
            "Action": action,
            "Region": region,
            "Timestamp": str(timestamp),
            "Nonce": str(nonce),
            "SecretId": secret_id,
            "SignatureMethod": algorithm,
        }
    )
    if request_client is not None:
        params["RequestClient"] = request_client
    if method.upper() == "POST":
        unsigned = sorted(name for name, value in params.items() if value.startswith("@"))
        if unsigned:
            raise ValueError(
                f"parameter {unsigned[0]!r} starts with '@', which POST signing skips: "
                "send this request with GET so that every parameter is signed"
            )
    params["Signature"] = sign(params, method, host, path, secret_key, algorithm)
    return params


def verify(
    params: Mapping[str, str],
    method: str,
    host: str,
    path: str,
    secret_key: str,
) -> bool:
    """True when ``params["Signature"]`` signs ``params`` (the algorithm named by SignatureMethod).

    A missing SignatureMethod means HmacSHA1, as in the SDK; an unknown one or a missing
    Signature fails. Freshness (Timestamp, Nonce) and which SecretId owns ``secret_key`` are the
    caller's checks.
    """
    given = params.get("Signature")
    algorithm = params.get("SignatureMethod", DEFAULT_ALGORITHM)
    if not given or algorithm not in _DIGESTS:
        return False
    expected = sign(params, method, host, path, secret_key, algorithm)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Signer:
    """One account's credentials, bound to the functions above (``repr`` hides the key)."""

    secret_id: str
    secret_key: str
    algorithm: SignatureMethod = DEFAULT_ALGORITHM

    def __repr__(self) -> str:
        return f"Signer(secret_id={self.secret_id!r}, algorithm={self.algorithm!r})"

    def sign(
        self, params: Mapping[str, object], method: str, host: str, path: str = DEFAULT_PATH
    ) -> str:
        return sign(params, method, host, path, self.secret_key, self.algorithm)

    def signed_params(
        self,
        action: str,
        request_params: Mapping[str, ParamValue],
        *,
        region: str,
        timestamp: int,
        nonce: int,
        method: HttpMethod = "GET",
        host: str,
        path: str = DEFAULT_PATH,
        request_client: str | None = None,
    ) -> dict[str, str]:
        return signed_params(
            action,
            request_params,
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            region=region,
            timestamp=timestamp,
            nonce=nonce,
            method=method,
            host=host,
            path=path,
            algorithm=self.algorithm,
            request_client=request_client,
        )

    def verify(
        self, params: Mapping[str, str], method: str, host: str, path: str = DEFAULT_PATH
    ) -> bool:
        return verify(params, method, host, path, self.secret_key)
