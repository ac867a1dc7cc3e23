"""SCRAM-SHA-256 (RFC 5802, RFC 7677) and SASLprep (RFC 4013)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillarbox.auth.saslprep import SASLprepError, prepare_password, saslprep
from pillarbox.auth.scram import (
    DEFAULT_ITERATIONS,
    ScramError,
    ScramSecrets,
    ScramSecretsError,
    ScramServer,
    decoy_secrets,
)

# RFC 7677 §3
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(scope="module")
def pencil() -> ScramSecrets:
    return ScramSecrets.derive("pencil", salt=SALT, iterations=4096)


def test_rfc7677_vector(pencil: ScramSecrets) -> None:
    server = ScramServer(server_nonce=SERVER_NONCE)
    first = server.receive_client_first(CLIENT_FIRST)
    assert (first.username, first.authzid, first.gs2_header, first.nonce) == (
        "user", "", "n,,", CLIENT_NONCE)
    assert server.server_first(pencil) == SERVER_FIRST
    assert server.receive_client_final(CLIENT_FINAL) == SERVER_FINAL
    assert server.finished


def _client_final(secrets_password: str, header: bytes, bare: str, server_first: bytes,
                  salt: bytes, iterations: int) -> bytes:
    """A client's final message, computed by RFC 5802 §3 directly."""
    nonce = server_first.decode().split(",")[0][2:]
    without_proof = f"c={base64.b64encode(header).decode()},r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", secrets_password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    auth = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(stored_key, auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


@pytest.mark.parametrize("header,cbind", [(b"y,,", b"c=eSws"), (b"n,a=user,", None)])
def test_y_flag_and_authzid(pencil: ScramSecrets, header: bytes, cbind: bytes | None) -> None:
    server = ScramServer(server_nonce=SERVER_NONCE)
    first = server.receive_client_first(header + b"n=user,r=abc")
    assert first.gs2_header == header.decode()
    assert first.authzid == ("user" if b"a=" in header else "")
    sf = server.server_first(pencil)
    final = _client_final("pencil", header, "n=user,r=abc", sf, SALT, 4096)
    if cbind is not None:
        assert final.startswith(cbind + b",")
    assert server.receive_client_final(final).startswith(b"v=")


def test_saslname_escapes(pencil: ScramSecrets) -> None:
    server = ScramServer()
    first = server.receive_client_first(b"n,,n=a=2Cb=3Dc@x.test,r=abc,x=ext")
    assert first.username == "a,b=c@x.test"
    assert first.bare == "n=a=2Cb=3Dc@x.test,r=abc,x=ext"


@pytest.mark.parametrize("message,error", [
    (b"p=tls-unique,,n=user,r=abc", "channel-binding-not-supported"),
    (b"q,,n=user,r=abc", "other-error"),
    (b"n,x=user,n=user,r=abc", "other-error"),
    (b"n,,m=ext,n=user,r=abc", "extensions-not-supported"),
    (b"n,,n=us=2Der,r=abc", "invalid-encoding"),
    (b"n,,n=user=,r=abc", "invalid-encoding"),
    (b"n,,n=\xff,r=abc", "invalid-encoding"),
    (b"n,,n=us\x00er,r=abc", "invalid-encoding"),
    (b"n,,n=,r=abc", "invalid-username-encoding"),
    (b"n,,n=\xc2\xad,r=abc", "invalid-username-encoding"),      # prepares to nothing
    (b"n,,n=a\x07b,r=abc", "invalid-username-encoding"),       # control character
    (b"n,,r=abc,n=user", "other-error"),
    (b"n,,n=user", "other-error"),
    (b"n,,n=user,r=", "other-error"),
    (b"n,,n=user,r=a\x7fb", "other-error"),
    (b"n,,n=user,r=abc,bogus", "other-error"),
    (b"n=user,r=abc", "other-error"),
    (b"n,,n=user,r=" + b"a" * 5000, "other-error"),
])
def test_client_first_refused(message: bytes, error: str) -> None:
    server = ScramServer()
    with pytest.raises(ScramError) as info:
        server.receive_client_first(message)
    assert info.value.error == error
    assert info.value.server_error == b"e=" + error.encode()
    assert info.value.message
    with pytest.raises(RuntimeError):       # the exchange is over
        server.server_first(ScramSecrets(4096, b"s", b"k" * 32, b"k" * 32))


def _final_variant(kind: str) -> bytes:
    if kind == "cbind":
        return CLIENT_FINAL.replace(b"c=biws", b"c=eSws")
    if kind == "nonce":
        return CLIENT_FINAL.replace(b"k0,p=", b"k1,p=")
    if kind == "proof":
        return CLIENT_FINAL.replace(b"p=dHzb", b"p=dHza")
    if kind == "short-proof":
        return CLIENT_FINAL.split(b",p=")[0] + b",p=AAAA"
    if kind == "base64":
        return CLIENT_FINAL.replace(b"p=dHzb", b"p=*Hzb")
    if kind == "no-proof":
        return CLIENT_FINAL.split(b",p=")[0]
    if kind == "order":
        c, r, p = CLIENT_FINAL.split(b",")
        return b",".join((r, c, p))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,error", [
    ("cbind", "channel-bindings-dont-match"),
    ("nonce", "other-error"),
    ("proof", "invalid-proof"),
    ("short-proof", "invalid-proof"),
    ("base64", "invalid-encoding"),
    ("no-proof", "other-error"),
    ("order", "other-error"),
])
def test_client_final_refused(pencil: ScramSecrets, kind: str, error: str) -> None:
    server = ScramServer(server_nonce=SERVER_NONCE)
    server.receive_client_first(CLIENT_FIRST)
    server.server_first(pencil)
    with pytest.raises(ScramError) as info:
        server.receive_client_final(_final_variant(kind))
    assert info.value.error == error


def test_wrong_password_fails_proof() -> None:
    wrong = ScramSecrets.derive("pencil2", salt=SALT, iterations=4096)
    server = ScramServer(server_nonce=SERVER_NONCE)
    server.receive_client_first(CLIENT_FIRST)
    server.server_first(wrong)
    with pytest.raises(ScramError) as info:
        server.receive_client_final(CLIENT_FINAL)
    assert info.value.error == "invalid-proof"


def test_out_of_order_calls() -> None:
    server = ScramServer()
    with pytest.raises(RuntimeError, match="expecting client-first"):
        server.receive_client_final(CLIENT_FINAL)
    with pytest.raises(ValueError):
        ScramServer(server_nonce="a,b")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_client_first_only_scram_errors(data: bytes) -> None:
    """Invariant: any client-first-message is parsed or refused with a ScramError."""
    try:
        ScramServer().receive_client_first(b"n,,n=" + data)
    except ScramError:
        pass


# ------------------------------------------------------------- stored secrets


def test_secrets_round_trip(pencil: ScramSecrets) -> None:
    text = pencil.format()
    assert text == ("SCRAM-SHA-256$4096$W22ZaJ0SNY7soEsUEjb6gQ==$"
                    "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=$"
                    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
    assert ScramSecrets.parse(text) == pencil
    assert str(pencil) == text
    assert "WG5d" not in repr(pencil)


def test_derive_defaults() -> None:
    a = ScramSecrets.derive("pw")
    b = ScramSecrets.derive("pw")
    assert a.iterations == DEFAULT_ITERATIONS >= 4096
    assert len(a.salt) == 16 and a.salt != b.salt
    with pytest.raises(ValueError):
        ScramSecrets.derive("")
    with pytest.raises(ValueError):
        ScramSecrets.derive("pw", iterations=1000)


@pytest.mark.parametrize("text,words", [
    ("SCRAM-SHA-256$4096$c2FsdA==$AAAA", "5"),
    ("SCRAM-SHA-1$4096$c2FsdA==$" + "A" * 43 + "=$" + "A" * 43 + "=", "SCRAM-SHA-1"),
    ("SCRAM-SHA-256$lots$c2FsdA==$" + "A" * 43 + "=$" + "A" * 43 + "=", "not a number"),
    ("SCRAM-SHA-256$100$c2FsdA==$" + "A" * 43 + "=$" + "A" * 43 + "=", "outside"),
    ("SCRAM-SHA-256$4096$c2Fsd!==$" + "A" * 43 + "=$" + "A" * 43 + "=", "salt is not base64"),
    ("SCRAM-SHA-256$4096$$" + "A" * 43 + "=$" + "A" * 43 + "=", "salt has 0"),
    ("SCRAM-SHA-256$4096$c2FsdA==$AAAA$" + "A" * 43 + "=", "StoredKey has 3"),
])
def test_secrets_parse_errors(text: str, words: str) -> None:
    with pytest.raises(ScramSecretsError, match=words):
        ScramSecrets.parse(text)


def test_decoy_salt_stable() -> None:
    a = decoy_secrets("nobody@x.test", b"k" * 32)
    b = decoy_secrets("nobody@x.test", b"k" * 32)
    c = decoy_secrets("other@x.test", b"k" * 32)
    assert a.salt == b.salt != c.salt and a.stored_key != b.stored_key


# ---------------------------------------------------------------- SASLprep


@pytest.mark.parametrize("text,prepared", [   # RFC 4013 §3
    ("I\u00adX", "IX"),
    ("user", "user"),
    ("USER", "USER"),
    ("\u00aa", "a"),
    ("\u2168", "IX"),
    ("a\u00a0b", "a b"),              # non-ASCII space mapped to SPACE
    ("\u0627\u0628", "\u0627\u0628"),  # right-to-left only
])
def test_saslprep(text: str, prepared: str) -> None:
    assert saslprep(text) == prepared


@pytest.mark.parametrize("text,words", [
    ("\u0007", "control"),
    ("\u0627\u0031", "begin and end"),
    ("\u0627a\u0628", "mixes"),
    ("a\ue000", "private use"),
    ("a\U0001f600", "unassigned"),
])
def test_saslprep_refused(text: str, words: str) -> None:
    with pytest.raises(SASLprepError, match=words):
        saslprep(text)


def test_saslprep_query_allows_unassigned() -> None:
    assert saslprep("a\U0001f600", allow_unassigned=True) == "a\U0001f600"


def test_prepare_password_falls_back() -> None:
    assert prepare_password("\u2168") == "IX"
    assert prepare_password("tab\there") == "tab\there"      # refused by SASLprep: as given
    assert prepare_password("\u00ad") == "\u00ad"             # prepares to nothing: as given


# ------------------------------------------------- interop: scramp as the client

try:
    import scramp
except ImportError:       # in the test extra; only the interop tests need it
    scramp = None
needs_scramp = pytest.mark.skipif(scramp is None, reason="scramp (test extra) not installed")


@needs_scramp
@pytest.mark.parametrize("username,password", [
    ("alice@example.test", "correct horse"),
    ("j\u00f6rg@b\u00fccher.example", "p\u00e4ss\u2168w\u00f6rd"),
    ("a,b=c@x.test", "pw with = and ,"),
])
def test_scramp_client(username: str, password: str) -> None:
    stored = ScramSecrets.derive(password)
    client = scramp.ScramClient(["SCRAM-SHA-256"], username, password)
    server = ScramServer()
    first = server.receive_client_first(client.get_client_first().encode())
    assert first.username == saslprep(username)
    client.set_server_first(server.server_first(stored).decode())
    server_final = server.receive_client_final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())    # raises if v= is wrong


@needs_scramp
def test_scramp_client_wrong_password() -> None:
    stored = ScramSecrets.derive("right")
    client = scramp.ScramClient(["SCRAM-SHA-256"], "u@x.test", "wrong")
    server = ScramServer()
    server.receive_client_first(client.get_client_first().encode())
    client.set_server_first(server.server_first(stored).decode())
    with pytest.raises(ScramError) as info:
        server.receive_client_final(client.get_client_final().encode())
    assert info.value.error == "invalid-proof"


@needs_scramp
def test_secrets_match_scramp() -> None:
    """Our stored keys equal those scramp derives from the same salt and count."""
    salt = b"0123456789abcdef"
    _, stored_key, server_key, iterations = scramp.ScramMechanism().make_auth_info(
        "p\u00e4ss", iteration_count=4096, salt=salt)
    ours = ScramSecrets.derive("p\u00e4ss", salt=salt, iterations=4096)
    assert (ours.stored_key, ours.server_key, ours.iterations) == (stored_key, server_key,
                                                                   iterations)
