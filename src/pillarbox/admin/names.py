"""Domain names and addresses as an administrator types them, in the form the store keeps.

The store keys everything by ASCII: domains lower-cased with IDNs as A-labels
(RFC 5890 §2.3.2.1), addresses as ``local@domain`` with the local part
lower-cased, which is how recipient resolution looks them up
(``pillarbox.deliver.recipients.normalize``).  An administrator may type
either form of an IDN, in any case; what is shown back is the A-label with
its U-label beside it.
"""

from __future__ import annotations

import re

import idna

from pillarbox.protocols.smtp.address import parse_path
from pillarbox.protocols.smtp.reply import RemoteProtocolError

__all__ = ["InvalidName", "normalize_address", "normalize_alias_source", "normalize_domain",
           "unicode_domain"]

MAX_DOMAIN = 253   # RFC 1035 §2.3.4, as text without the root's trailing dot
MAX_LABEL = 63
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


class InvalidName(ValueError):
    """A domain name or address the administrator typed cannot be used; says why."""


def normalize_domain(text: str) -> str:
    """``text`` as the store keeps a domain: lower case, U-labels as A-labels.

    ASCII labels must be LDH labels (RFC 1035 §2.3.1, RFC 1123 §2.1) and are
    only lower-cased, like the address parser does, so that ``domain add``
    and the lookup of a received address agree.  Non-ASCII text is mapped
    with UTS #46 first (so ``Bücher。Example`` works), then each U-label is
    encoded (IDNA2008).  ``xn--`` labels must decode.  Raises InvalidName.
    """
    name = text.strip()
    name = name[:-1] if name.endswith(".") else name
    if not name:
        raise InvalidName("empty domain name")
    if name.startswith("["):
        raise InvalidName(f"{text!r}: an address literal is not a domain name")
    if _is_ip_address(name):
        raise InvalidName(f"{text!r}: an IP address is not a domain name")
    if not name.isascii():
        try:
            name = idna.uts46_remap(name, std3_rules=True, transitional=False)
        except idna.IDNAError as e:
            raise InvalidName(f"{text!r} is not a valid domain name: {e}") from None
    labels = []
    for label in name.split("."):
        labels.append(_ascii_label(text, label))
    ascii_name = ".".join(labels)
    if len(ascii_name) > MAX_DOMAIN:
        raise InvalidName(f"{text!r}: domain name longer than {MAX_DOMAIN} characters")
    if labels[-1].isdigit():
        raise InvalidName(f"{text!r}: the last label of a domain name cannot be all digits")
    return ascii_name


def _ascii_label(text: str, label: str) -> str:
    if not label:
        raise InvalidName(f"{text!r} has an empty label")
    if label.isascii():
        label = label.lower()
        if not _LDH_LABEL.fullmatch(label):
            raise InvalidName(
                f"{text!r}: bad label {label!r} (letters, digits and inner hyphens only)"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as e:
                raise InvalidName(f"{text!r}: {label!r} is not a valid A-label: {e}") from None
    else:
        try:
            label = idna.encode(label, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise InvalidName(f"{text!r} is not a valid domain name: {e}") from None
    if len(label) > MAX_LABEL:
        raise InvalidName(f"{text!r}: label longer than {MAX_LABEL} characters")
    return label


def _is_ip_address(name: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", name)) or ":" in name


def unicode_domain(ascii_name: str) -> str:
    """The U-label form of a stored domain, for display; the input if it has none."""
    out = []
    for label in ascii_name.split("."):
        if label.startswith("xn--"):
            try:
                label = idna.decode(label)
            except (idna.IDNAError, UnicodeError):
                pass
        out.append(label)
    return ".".join(out)


def normalize_address(text: str) -> str:
    """``local@domain`` as the store keys accounts, aliases and their targets.

    The address is parsed as an RFC 5321 §4.1.2 forward path, with SMTPUTF8
    (RFC 6531) allowed; the angle brackets are optional.  Address literals
    and the bare ``Postmaster`` are refused: accounts live in domains.
    """
    raw = text.strip()
    path = raw if raw.startswith("<") else f"<{raw}>"
    try:
        mailbox = parse_path(path, reverse=False, smtputf8=True)
    except RemoteProtocolError as e:
        reason = " / ".join(e.reply.lines).removeprefix("Bad recipient address syntax: ")
        raise InvalidName(f"bad address {text!r}: {reason}") from None
    if mailbox is None or not mailbox.domain:
        raise InvalidName(f"bad address {text!r}: write local-part@domain")
    if mailbox.is_literal:
        raise InvalidName(f"bad address {text!r}: an address literal is not a local domain")
    return f"{mailbox.local_part.lower()}@{normalize_domain(mailbox.domain)}"


def normalize_alias_source(text: str) -> str:
    """An alias source: an address, or ``@domain`` for the domain's catch-all."""
    raw = text.strip()
    if raw.startswith("@"):
        return "@" + normalize_domain(raw[1:])
    return normalize_address(raw)
