"""Outbound fetches of URLs that come from outside (a VOD event's output URLs) stay off the
local network.

A URL whose host is, or resolves to, a loopback, private, link-local, shared, multicast,
reserved or unspecified address (IPv4 or IPv6, including IPv4 inside IPv6: mapped, 6to4, NAT64)
is refused, unless its host:port is one vodflow serves outputs from itself (its public URL, and
the VOD endpoint it calls: a self-hosted engine serves its files where it answers its API), or
the operator allowed it (``VODFLOW_VERIFY_ALLOW_HOSTS``: host names, ``host:port``, addresses
or CIDR ranges).

The check is made where the connection is opened (``GuardedTransport``'s network backend):
the name is resolved once, every address it resolves to is checked, and the connection goes to
an address that passed, so a name that resolves differently a moment later (DNS rebinding)
gains nothing. Each redirect hop opens its own connection, so it is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

SETTING = "VODFLOW_VERIFY_ALLOW_HOSTS"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(Exception):
    """A URL (or the connection it needs) that the policy does not allow; the message says which
    address and what to change."""

    def __init__(self, host: str, address: str, kind: str) -> None:
        self.host = host
        self.address = address
        self.kind = kind
        resolved = f"{host} is" if host == address else f"{host} resolves to {address},"
        super().__init__(
            f"{resolved} a {kind} address, and output checks do not fetch from the local "
            f"network (allow it with {SETTING})"
        )


def blocked_kind(address: IPAddress) -> str | None:
    """Why ``address`` is off limits (``'loopback'``, ``'private'``, ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (address.sixtofour if address.sixtofour else None)
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_kind(embedded)
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    if not address.is_global:
        return "non-global"  # shared address space (100.64.0.0/10) and the like
    return None


def _origin(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower(), parts.port or _DEFAULT_PORTS[parts.scheme]


@dataclass(frozen=True)
class AddressPolicy:
    """Which hosts outbound checks may reach besides public addresses."""

    origins: frozenset[tuple[str, int]] = frozenset()
    """host:port pairs allowed whatever they resolve to."""
    hosts: frozenset[str] = frozenset()
    """host names allowed on any port, whatever they resolve to."""
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)
    """address ranges allowed."""

    @classmethod
    def build(cls, own_urls: Iterable[str], allow: Iterable[str] = ()) -> AddressPolicy:
        """The policy for this vodflow: its own URLs' host:port, and ``allow``'s entries."""
        origins = {o for o in map(_origin, own_urls) if o is not None}
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allow:
            kind, value = parse_allow_entry(entry)
            if kind == "network":
                networks.append(typing.cast(IPNetwork, value))
            elif kind == "origin":
                origins.add(typing.cast(tuple[str, int], value))
            else:
                hosts.add(typing.cast(str, value))
        return cls(frozenset(origins), frozenset(hosts), tuple(networks))

    def trusts(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        return (host, port) in self.origins or host in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    async def vet(self, host: str, port: int) -> list[str]:
        """The addresses a connection to host:port may go to (the host itself when it is
        trusted by name); Refused when the host resolves to an address not allowed."""
        if self.trusts(host, port):
            return [host]
        bare = host.strip("[]")
        try:
            literal: IPAddress | None = ipaddress.ip_address(bare)
        except ValueError:
            literal = None
        if literal is not None:
            candidates = [literal]
        else:
            candidates = await _resolve(bare, port)
        for address in candidates:
            kind = blocked_kind(address)
            if kind is not None and not self.allows_address(address):
                raise Refused(bare, str(address), kind)
        return [str(a) for a in candidates]

    async def vet_url(self, url: str) -> None:
        """Refused unless ``url`` is http(s) and its host may be reached."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url} is not an http(s) URL")
        await self.vet(parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])


def parse_allow_entry(entry: str) -> tuple[str, object]:
    """One ``VODFLOW_VERIFY_ALLOW_HOSTS`` entry: ``('network', IPNetwork)`` for an address or
    CIDR range, ``('origin', (host, port))`` for ``host:port``, ``('host', name)``; ValueError
    naming the entry otherwise."""
    text = entry.strip()
    if not text:
        raise ValueError("empty entry")
    try:
        return "network", ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: port out of range")
        return "origin", (host.lower().strip("[]"), int(port))
    if (
        "/" in text
        or ":" in text
        or not all(part and all(c.isalnum() or c in "-_" for c in part) for part in text.split("."))
    ):
        raise ValueError(f"{text!r} is not a host name, host:port, address or CIDR range")
    return "host", text.lower()


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy allows (TLS still checks the name)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self.policy.vet(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout}s") from None
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("output checks do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, with every connection checked against ``policy``. Proxies from the
    environment are not used: the connection must go where the check says."""

    def __init__(self, policy: AddressPolicy, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits()
        super().__init__(trust_env=False, limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )


def guarded_client(policy: AddressPolicy, timeout: float = 30.0) -> httpx.AsyncClient:
    """An HTTP client for fetching URLs from outside: checked connections, no redirects
    followed by itself, no proxies from the environment."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
