"""SASL mechanisms (RFC 4422): PLAIN (RFC 4616), LOGIN, SCRAM-SHA-256 (RFC 7677)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.auth.sasl import (
    MECHANISMS,
    Challenge,
    Done,
    Failed,
    Login,
    NeedPassword,
    NeedScramSecrets,
    Plain,
    ScramSha256,
    new_mechanism,
)
from pillarbox.auth.scram import ScramSecrets

from .test_scram import CLIENT_FINAL, CLIENT_FIRST, SALT, SERVER_FINAL, SERVER_FIRST, SERVER_NONCE


def lower(name: str) -> str:
    """A normalize like the service's: case-insensitive, refuses names without '@'."""
    if "@" not in name:
        raise ValueError("not an address")
    return name.lower()


# -------------------------------------------------------------------- PLAIN


def test_plain_initial_response() -> None:
    step = Plain().start(b"\0tim\0tanstaaftanstaaf")     # RFC 4616 §4
    assert step == NeedPassword("tim", "tanstaaftanstaaf", "")
    assert "tanstaaf" not in repr(step)


def test_plain_empty_challenge_then_response() -> None:
    mech = Plain(lower)
    assert mech.start(None) == Challenge(b"")
    assert mech.step("Ki@X.test\0Ki@x.test\0pässwörd".encode()) == NeedPassword(
        "ki@x.test", "pässwörd", "ki@x.test")
    with pytest.raises(RuntimeError):
        mech.step(b"again")


@pytest.mark.parametrize("message,words", [
    (b"tim\0tanstaaf", "1 NUL"),
    (b"\0tim\0pw\0more", "3 NUL"),
    (b"\0\0pw", "empty user name"),
    (b"\0tim@x.test\0", "empty password"),
    (b"\0tim@x.test\0\xff", "not UTF-8"),
    (b"\0tim\0pw", "bad user name: not an address"),
    (b"Ann@x.test\0tim@x.test\0pw", "may not act as ann@x.test"),
    (b"ann\0tim@x.test\0pw", "bad authorization identity"),
    (b"\0" + b"a" * 5000 + b"\0pw", "longer than"),
])
def test_plain_refused(message: bytes, words: str) -> None:
    step = Plain(lower).start(message)
    assert isinstance(step, Failed) and words in step.reason


def test_plain_saslprep_default() -> None:
    step = Plain().start("\0I\u00adX\0pw".encode())
    assert isinstance(step, NeedPassword) and step.username == "IX"
    assert isinstance(Plain().start(b"\0a\x07b\0pw"), Failed)


# -------------------------------------------------------------------- LOGIN


def test_login_two_challenges() -> None:
    mech = Login(lower)
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.step(b"Tim@X.test") == Challenge(b"Password:")
    assert mech.step(b"secret") == NeedPassword("tim@x.test", "secret")


def test_login_initial_response_is_the_user() -> None:
    mech = Login(lower)
    assert mech.start(b"tim@x.test") == Challenge(b"Password:")
    assert mech.step(b"secret") == NeedPassword("tim@x.test", "secret")
    assert Login().start(b"") == Challenge(b"Username:")


@pytest.mark.parametrize("user,password,words", [
    (b"tim", None, "not an address"),
    (b"\xfe", None, "not UTF-8"),
    (b"t\0m@x.test", None, "NUL"),
    (b"tim@x.test", b"", "empty"),
    (b"tim@x.test", b"\xc3", "not UTF-8"),
])
def test_login_refused(user: bytes, password: bytes | None, words: str) -> None:
    mech = Login(lower)
    mech.start(None)
    step = mech.step(user)
    if password is not None:
        assert step == Challenge(b"Password:")
        step = mech.step(password)
    assert isinstance(step, Failed) and words in step.reason


# ------------------------------------------------------------ SCRAM-SHA-256


@pytest.fixture(scope="module")
def pencil() -> ScramSecrets:
    return ScramSecrets.derive("pencil", salt=SALT, iterations=4096)


def test_scram_rfc7677_through_the_mechanism(pencil: ScramSecrets) -> None:
    mech = ScramSha256(server_nonce=SERVER_NONCE)
    assert mech.start(None) == Challenge(b"")
    assert mech.step(CLIENT_FIRST) == NeedScramSecrets("user", "")
    assert mech.feed_secrets(pencil) == Challenge(SERVER_FIRST)
    assert mech.step(CLIENT_FINAL) == Done(SERVER_FINAL)
    with pytest.raises(RuntimeError):
        mech.step(b"")


def test_scram_initial_response_and_wrong_password() -> None:
    mech = ScramSha256(server_nonce=SERVER_NONCE)
    assert mech.start(CLIENT_FIRST) == NeedScramSecrets("user", "")
    mech.feed_secrets(ScramSecrets.derive("pencils", salt=SALT, iterations=4096))
    step = mech.step(CLIENT_FINAL)
    assert step == Failed("wrong password", b"e=invalid-proof")


def test_scram_unknown_user_looks_like_a_user(pencil: ScramSecrets) -> None:
    key = b"k" * 32
    first: list[bytes] = []
    for _ in range(2):
        mech = ScramSha256(decoy_key=key, server_nonce=SERVER_NONCE)
        mech.start(CLIENT_FIRST)
        step = mech.feed_secrets(None)
        assert isinstance(step, Challenge) and step.data.startswith(b"r=" + b"rOpr")
        first.append(step.data)
        assert mech.step(CLIENT_FINAL) == Failed("unknown user", b"e=invalid-proof")
    assert first[0] == first[1]        # same salt for the same name each time


@pytest.mark.parametrize("message,words,error", [
    (b"p=tls-unique,,n=user,r=abc", "channel binding", b"e=channel-binding-not-supported"),
    (b"n,a=other@x.test,n=user@x.test,r=abc", "may not act as other@x.test",
     b"e=other-error"),
    (b"n,,n=user,r=abc", "bad user name", b"e=other-error"),
])
def test_scram_client_first_refused(message: bytes, words: str, error: bytes) -> None:
    mech = ScramSha256(lower)
    step = mech.start(message)
    assert isinstance(step, Failed) and words in step.reason and step.server_error == error


def test_scram_authzid_same_account() -> None:
    step = ScramSha256(lower).start(b"n,a=User@X.test,n=user@x.test,r=abc")
    assert step == NeedScramSecrets("user@x.test", "user@x.test")


def test_scram_misuse_is_a_bug() -> None:
    mech = ScramSha256()
    with pytest.raises(RuntimeError):
        mech.feed_secrets(None)
    mech.start(CLIENT_FIRST)
    with pytest.raises(RuntimeError):
        mech.step(CLIENT_FINAL)          # secrets were not fed
    with pytest.raises(RuntimeError):
        Plain().feed_secrets(None)


# ------------------------------------------------------------------ general


def test_registry() -> None:
    assert set(MECHANISMS) == {"PLAIN", "LOGIN", "SCRAM-SHA-256"}
    assert [n for n, c in MECHANISMS.items() if c.plaintext] == ["PLAIN", "LOGIN"]
    assert isinstance(new_mechanism("scram-sha-256"), ScramSha256)
    with pytest.raises(KeyError):
        new_mechanism("CRAM-MD5")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MECHANISMS)), st.lists(st.binary(max_size=80), max_size=3))
def test_any_bytes_give_a_step(name: str, messages: list[bytes]) -> None:
    """Invariant: whatever a client sends, a mechanism answers with a Step, never raises."""
    mech = new_mechanism(name, lower)
    step = mech.start(messages[0] if messages else None)
    for data in messages[1:]:
        if isinstance(step, NeedScramSecrets):
            step = mech.feed_secrets(None)
        if not isinstance(step, Challenge):
            break
        step = mech.step(data)
    assert isinstance(step, (Challenge, NeedPassword, NeedScramSecrets, Done, Failed))


def test_base64_is_the_callers_job() -> None:
    """The mechanisms take raw bytes: base64 of a PLAIN message is just a bad message."""
    encoded = base64.b64encode(b"\0tim@x.test\0pw")
    assert isinstance(Plain(lower).start(encoded), Failed)
