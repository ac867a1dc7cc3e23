"""Which addresses an authenticated user may send as (RFC 6409 §4.3, §6.1).

A submission server knows who submits, so it need not take a forged sender
on trust: the envelope sender (at MAIL) and every address of ``From:`` (at
the end of DATA) must be the user's own.  That is, for the account
``alice@example.com``:

- ``alice@example.com`` itself, in any case of the local part;
- its sub-addresses, with the separators of ``delivery.recipient_delimiter``
  (``alice+lists@example.com``, RFC 5233);
- every alias that leads to the account (``sales@example.com -> alice``,
  also through other aliases), but not a domain's catch-all, which would make
  every address of the domain anyone's;
- what the administrator granted with ``pillarbox user send-as``: an address,
  or ``@domain`` for every address of a domain.

Anything else is refused with 550 5.7.1 naming the address.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from pillarbox.deliver.recipients import MAX_ALIAS_DEPTH, lookup_keys
from pillarbox.protocols.smtp.address import Mailbox
from pillarbox.protocols.smtp.reply import Reply
from pillarbox.store.base import Credentials
from pillarbox.store.directory import Directory

__all__ = ["SenderCheck", "not_yours"]

Grants = Callable[[int], Collection[str]]


def not_yours(address: str, account: str, where: str) -> Reply:
    """550 5.7.1 naming the address (RFC 3463 X.7.1: delivery not authorized)."""
    return Reply(550, "5.7.1",
                 f"{where} <{address}> is not one of the addresses {account} may send as")


class SenderCheck:
    """``allowed(account, mailbox)``: whether ``account`` may send as ``mailbox``."""

    def __init__(self, directory: Directory, delimiters: str, grants: Grants | None) -> None:
        self._directory = directory
        self._delimiters = delimiters
        self._grants = grants

    def allowed(self, account: Credentials, mailbox: Mailbox) -> bool:
        if not mailbox.domain or mailbox.is_literal:
            return False
        try:
            domain = mailbox.ascii_domain
        except UnicodeError:
            return False
        own = account.address.lower()
        candidates = lookup_keys(mailbox.local_part, domain, self._delimiters)
        if own in candidates:
            return True
        if self._grants is not None:
            granted = {g.lower() for g in self._grants(account.account_id)}
            if f"@{domain}" in granted or any(c in granted for c in candidates):
                return True
        return any(self._leads_to(c, account.account_id, 0, set()) for c in candidates)

    def _leads_to(self, key: str, account_id: int, depth: int, seen: set[str]) -> bool:
        """Whether the alias ``key`` reaches the account (never through a catch-all)."""
        if key in seen or depth > MAX_ALIAS_DEPTH or key.startswith("@"):
            return False
        seen.add(key)
        targets = self._directory.alias_targets(key)
        if not targets:
            if depth == 0:
                return False
            found = self._directory.find_account(key)
            return found is not None and found.id == account_id
        return any(self._leads_to(t.lower(), account_id, depth + 1, seen) for t in targets)
