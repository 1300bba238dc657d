"""The one guard on addresses this service connects out to on a user's behalf: input URLs and webhook targets."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from api.errors import Problem
from api.settings import Settings

MAX_WEBHOOK_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named explicitly even though the generic checks below already cover them: these are the addresses attackers aim at.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)


# IPv6 ranges that reach IPv4 (or old private space) through a translator: whatever they embed, refuse them, since
# Python's is_global for these differs between versions (3.12 follows the IANA registry, where 64:ff9b::/96 is
# global) and a NAT64 gateway would carry 64:ff9b::a9fe:a9fe to 169.254.169.254.
TRANSLATED_RANGES = (
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64 local-use prefix (RFC 8215)
    ipaddress.ip_network("::/96"),  # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291), :: and ::1 included
)
SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated (RFC 3879), still routed privately by some networks

Resolver = Callable[[str, int], Awaitable[list[str]]]

# Host names are resolved in a few threads of their own, never in the default executor that probes every upload:
# a lookup that a slow DNS server holds keeps one of these threads until the system resolver gives up, while its
# caller has its answer (an OSError) after DNS_TIMEOUT_SECONDS.
DNS_THREADS = 8
DNS_TIMEOUT_SECONDS = 5.0
_dns_threads = ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="outbound-dns")


class OutboundRefused(Exception):
    """The target may not be connected to; the message says why and is safe to show the user."""


def address_refusal(address: IPAddress) -> str | None:
    """Why `address` may not be connected to, or None when it is plainly on the public internet."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in TRANSLATED_RANGES):
            return f"{address} is a NAT64 or IPv4-compatible address, which is not allowed."
        if address in SITE_LOCAL:
            return f"{address} is a site-local address, which is not allowed."
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            refusal = address_refusal(embedded)
            if refusal is not None:
                return refusal
        if address.teredo is not None:
            return "Teredo addresses are not allowed."
    if address in METADATA_ADDRESSES:
        return "Cloud metadata addresses are not allowed."
    if (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    ):
        return f"{address} is not a public address."
    return None


def parse_address(text: str) -> IPAddress:
    """An address as getaddrinfo returns it, without an IPv6 zone id. Raises ValueError for a host name."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def is_public(address: str) -> bool:
    return address_refusal(parse_address(address)) is None


def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver (blocking). Numeric forms (2130706433, 0x7f.1) resolve too."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, within DNS_TIMEOUT_SECONDS (else OSError), in the DNS threads."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(DNS_TIMEOUT_SECONDS):
            return await loop.run_in_executor(_dns_threads, system_lookup, host, port)
    except TimeoutError:
        raise OSError(f"no DNS answer for {host!r} within {DNS_TIMEOUT_SECONDS:g} s") from None


def host_name(url: httpx.URL) -> str:
    """The URL's host as it is resolved and sent: IDNA-encoded (xn--...), an IPv6 address without brackets."""
    return url.raw_host.decode("ascii")


async def resolve_checked(host: str, port: int, *, allow_private: bool, resolver: Resolver = resolve_host) -> str:
    """Resolve `host` once and return the one address to connect to. Every answer must pass the guard (a name that
    answers both a public and a private address is refused): raises OutboundRefused. Resolution failures raise
    OSError (or UnicodeError for names IDNA cannot encode)."""
    addresses = [parse_address(address) for address in await resolver(host, port)]
    if not addresses:
        raise OutboundRefused(f"{host!r} has no address.")
    if not allow_private:
        for address in addresses:
            refusal = address_refusal(address)
            if refusal is not None:
                raise OutboundRefused(refusal)
    return str(addresses[0])


def pinned_request(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    address: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None = None,
) -> httpx.Request:
    """A request to `url` that connects to the checked `address`, with the original name as Host and TLS SNI (and
    certificate check): httpx never resolves the name again, so a DNS answer that changes after the check
    (rebinding) cannot redirect the connection. Host is the URL's ASCII netloc: an internationalised name in its
    xn-- form, an IPv6 address in brackets, the port when the URL names one."""
    return client.build_request(
        method,
        url.copy_with(host=address),
        headers={**headers, "Host": url.netloc.decode("ascii")},
        content=content,
        extensions={"sni_hostname": host_name(url)},
    )


def validate_webhook_url(url: str, settings: Settings) -> str:
    """Submit-time check of a job's `webhook_url`; raises Problem(422, "invalid_webhook_url"). Host names are
    resolved again at delivery time, where private addresses are refused too."""

    def invalid(detail: str) -> Problem:
        return Problem(422, "invalid_webhook_url", "The webhook URL is not accepted", detail)

    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise invalid(f"The URL is longer than {MAX_WEBHOOK_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise invalid("The URL cannot be parsed.") from exc
    # Local development and tests deliver to http://127.0.0.1; production refuses both http and private targets.
    insecure_ok = settings.webhook_allow_insecure_urls
    if parts.scheme != "https" and not (insecure_ok and parts.scheme == "http"):
        raise invalid("Webhook URLs must use https.")
    if not parts.hostname:
        raise invalid("The URL has no host.")
    if parts.username or parts.password:
        raise invalid("Credentials in the URL are not accepted; authenticate with the webhook signature.")
    if not insecure_ok:
        host = parts.hostname
        if host == "localhost" or host.endswith(".localhost"):
            raise invalid("The URL points to a private address.")
        with contextlib.suppress(ValueError):  # a host name: checked when resolved at delivery time
            if not is_public(host):
                raise invalid("The URL points to a private address.")
    return url
