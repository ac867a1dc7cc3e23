"""Who may relay, and the addresses that try to relay through a local domain.

DESIGN.md, security stance: never an open relay.  Only authenticated users
and clients in ``smtp.trusted_networks`` may send to other domains; everyone
else may only send to local recipients.  Syntax alone does not close the
door: an address of a local domain can carry routing that some mail system
downstream would follow (the classic open-relay tests, as in Postfix's
``allow_untrusted_routing = no``), so from an untrusted client these are
refused at RCPT even when the domain is ours:

- the percent hack ``user%other.example@local`` and bang paths
  ``other.example!user@local`` (RFC 1123 5.2.16 left ``%`` to local policy);
- quoted local parts holding ``@`` (``"user@other.example"@local``);
- source routes ``<@a,@b:user@c>`` (RFC 5321 3.6.1: servers MAY refuse them);
- address literals that are not one of our own addresses (RFC 5321 4.1.3).

A trailing dot (``user@local.``) or our domain as the suffix of another
(``user@local.other.example``, ``user@other.local``) never gets here: the
first is refused by the path syntax (501), the second resolves as a remote
domain.  ``%`` and ``!`` are refused whatever ``delivery.recipient_delimiter``
says, so do not use them as sub-address separators.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from pillarbox.protocols.smtp.address import Mailbox

__all__ = ["Network", "in_networks", "literal_address", "parse_networks", "routing_trick"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(prefixes: Iterable[str]) -> tuple[Network, ...]:
    """CIDR prefixes (``192.0.2.0/24``, ``2001:db8::/32``) to networks; ValueError says why."""
    return tuple(ipaddress.ip_network(p.strip(), strict=True) for p in prefixes)


@functools.lru_cache(maxsize=1024)
def _address(text: str) -> Address | None:
    """The address of ``text``, remembered: every connection asks for its
    client's (``in_networks``), and ``ipaddress`` parses slowly."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(client_ip: str, networks: Sequence[Network]) -> bool:
    """Whether ``client_ip`` (IPv4-mapped IPv6 counts as IPv4) is in one of ``networks``."""
    addr = _address(client_ip)
    if addr is None:
        return False
    return any(addr.version == net.version and addr in net for net in networks)


def literal_address(domain: str) -> Address | None:
    """The address of an address literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``, if it is one."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    elif ":" in inner:
        return None          # a General-address-literal: no address of ours
    return _address(inner)


def routing_trick(path: Mailbox, source_route: bool) -> str | None:
    """Why a forward path carries routing of its own (module docstring), or None."""
    if source_route:
        return "source routes are not accepted (RFC 5321 3.6.1)"
    local = path.local_part
    if "@" in local:
        return "an '@' in the local part"
    if "%" in local:
        return "the percent hack ('%' in the local part)"
    if "!" in local:
        return "a bang path ('!' in the local part)"
    return None
