"""The demo account's password, printed by ``make serve`` in a ready ``swaks`` line."""

from __future__ import annotations

import string

from pillarbox.serve import demo_password


def test_the_demo_password_is_letters_and_digits_only() -> None:
    # token_urlsafe gave '-nPugYzHkMpue38F', which swaks took for an option.
    alphabet = set(string.ascii_letters + string.digits)
    passwords = {demo_password() for _ in range(2000)}
    assert len(passwords) == 2000
    for password in passwords:
        assert len(password) == 16 and set(password) <= alphabet
