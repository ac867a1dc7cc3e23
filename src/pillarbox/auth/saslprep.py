"""SASLprep (RFC 4013): the stringprep profile for user names and passwords.

SCRAM (RFC 5802 §2.2, "Normalize") and PLAIN (RFC 4616 §2) prepare both the
strings a client presents and the ones a server stores with this profile, so
that "I\\u00adX", "\\u2168" and "IX" are the same password.  The steps, in
RFC 4013 §2's order:

1. map (§2.1): non-ASCII spaces (stringprep table C.1.2) to U+0020,
   "commonly mapped to nothing" (B.1) removed;
2. normalise (§2.2): Unicode NFKC, *as of Unicode 3.2* (stringprep's
   version, hence ``unicodedata.ucd_3_2_0``);
3. prohibit (§2.3): C.1.2, C.2.1, C.2.2, C.3 to C.9;
4. bidirectional check (§2.4, RFC 3454 §6): a string with a RandALCat
   character (D.1) has no LCat character (D.2) and begins and ends with
   RandALCat;
5. unassigned code points (§2.5, RFC 3454 §7): refused in a *stored* string,
   allowed in a *query*.

A string that fails raises :class:`SASLprepError` (a ValueError) naming the
character and the rule.
"""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SASLprepError", "prepare_password", "saslprep"]


class SASLprepError(ValueError):
    """The string cannot be prepared (RFC 4013 §2.3 to §2.5); says which character and why."""


_PROHIBITED = (
    (stringprep.in_table_c12, "a non-ASCII space"),
    (stringprep.in_table_c21_c22, "a control character"),
    (stringprep.in_table_c3, "a private use character"),
    (stringprep.in_table_c4, "a non-character code point"),
    (stringprep.in_table_c5, "a surrogate code point"),
    (stringprep.in_table_c6, "a character inappropriate for plain text"),
    (stringprep.in_table_c7, "a character inappropriate for canonical representation"),
    (stringprep.in_table_c8, "a change-display-properties or deprecated character"),
    (stringprep.in_table_c9, "a tagging character"),
)


def saslprep(text: str, *, allow_unassigned: bool = False) -> str:
    """``text`` prepared by RFC 4013; ``allow_unassigned`` for queries (§2.5).

    The result may be empty (a string of soft hyphens); whether that is
    acceptable is the caller's decision.
    """
    # §2.1 mapping
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in text
        if not stringprep.in_table_b1(c)
    )
    # §2.2 normalisation, Unicode 3.2 as stringprep requires
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    # §2.3 prohibited output, §2.5 unassigned code points
    for c in prepared:
        for table, what in _PROHIBITED:
            if table(c):
                raise SASLprepError(f"{_name(c)} is {what} (RFC 4013 §2.3)")
        if not allow_unassigned and stringprep.in_table_a1(c):
            raise SASLprepError(f"{_name(c)} is unassigned in Unicode 3.2 (RFC 4013 §2.5)")
    # §2.4 bidirectional characters (RFC 3454 §6)
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared):
            raise SASLprepError(
                "mixes right-to-left and left-to-right characters (RFC 3454 §6)"
            )
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise SASLprepError(
                "a right-to-left string must begin and end with a right-to-left "
                "character (RFC 3454 §6)"
            )
    return prepared


def prepare_password(password: str) -> str:
    """A password as it is hashed and checked: SASLprep'd as a query, else as given.

    Both the argon2id hash and the SCRAM secrets are made from this form, so
    PLAIN and SCRAM agree on what a password is.  Unassigned code points are
    allowed (Unicode 3.2 predates emoji, and people use them in passwords); a
    password SASLprep refuses (a control character, say) is used unchanged,
    as PostgreSQL does for SCRAM, rather than made impossible to log in with;
    so is one that prepares to nothing.
    """
    try:
        return saslprep(password, allow_unassigned=True) or password
    except SASLprepError:
        return password


def _name(c: str) -> str:
    return f"U+{ord(c):04X}"
