"""Hypothesis strategies for MIME messages, all in one place.

``messages()`` drives the seeded generator of ``corpus.py`` (so every example
can be replayed with ``random.Random``), ``malformed_messages()`` adds damage,
``raw_bytes()`` is anything at all with mail-ish fragments mixed in.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from .corpus import generate_message

FRAGMENTS = [b"\r\n", b"\n", b"\r", b"--", b"--b", b"--b--", b"\r\n\r\n", b":", b"Content-Type: ",
             b"multipart/mixed; boundary=b", b"message/rfc822", b"=?utf-8?q?", b"?=", b"\x00",
             b"\xff", b"base64", b"Content-Transfer-Encoding: ", b"quoted-printable", b"=",
             b"\"", b"(", b")", b"<", b">", b"@", b",", b";", b"*0*=", b"''", b"%", b"\t", b" ",
             b"=?base64?q?", b"charset=utf-16", b"name*=", b"message/global"]


def messages() -> st.SearchStrategy[bytes]:
    return st.randoms(use_true_random=False).map(lambda r: generate_message(random.Random(r.random())))


def malformed_messages() -> st.SearchStrategy[bytes]:
    return st.randoms(use_true_random=False).map(
        lambda r: generate_message(random.Random(r.random()), malformed=True))


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=60).map(b"".join)
