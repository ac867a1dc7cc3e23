"""Authentication-Results (RFC 8601): rendering, folding, and removing forged fields of ours."""

from __future__ import annotations

import re

import pytest

from pillarbox.policy.authres import (
    AuthenticationResults,
    MethodResult,
    authserv_id,
    is_ours,
    quote_value,
    remove_ours,
)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _unfold(field: bytes) -> str:
    return re.sub(r"\r\n(?=[ \t])", "", field.decode("utf-8"))


# -- rendering: RFC 8601 Appendix B -------------------------------------------------

def test_b2_no_results() -> None:
    ar = AuthenticationResults("example.org", version=1)
    assert ar.render() == b"Authentication-Results: example.org 1; none\r\n"


def test_b3_spf() -> None:
    ar = AuthenticationResults.of("example.com", [
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "example.net"),))])
    assert _squash(ar.value()) == _squash("""example.com;
                  spf=pass smtp.mailfrom=example.net""")
    assert ar.render() == b"Authentication-Results: example.com; spf=pass smtp.mailfrom=example.net\r\n"


def test_b4_auth_and_iprev() -> None:
    ar = AuthenticationResults.of("example.com", [
        MethodResult("auth", "pass", comment="cram-md5", properties=(("smtp.auth", "sender@example.net"),)),
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "example.net"),)),
    ])
    assert ar.value() == _squash("""example.com;
                  auth=pass (cram-md5) smtp.auth=sender@example.net;
                  spf=pass smtp.mailfrom=example.net""")
    iprev = AuthenticationResults.of("example.com", [
        MethodResult("iprev", "pass", properties=(("policy.iprev", "192.0.2.200"),))])
    assert iprev.value() == "example.com; iprev=pass policy.iprev=192.0.2.200"


def test_b5_comment() -> None:
    ar = AuthenticationResults.of("example.com", [
        MethodResult("sender-id", "fail", properties=(("header.from", "example.com"),)),
        MethodResult("dkim", "pass", comment="good signature", properties=(("header.d", "example.com"),)),
    ])
    assert ar.value() == _squash("""example.com;
                  sender-id=fail header.from=example.com;
                  dkim=pass (good signature) header.d=example.com""")


def test_b6_reasons_and_at_domains() -> None:
    ar = AuthenticationResults.of("example.com", [
        MethodResult("dkim", "pass", reason="good signature",
                     properties=(("header.i", "@mail-router.example.net"),)),
        MethodResult("dkim", "fail", reason="bad signature",
                     properties=(("header.i", "@newyork.example.com"),)),
    ])
    rfc = """example.com;
                  dkim=pass reason="good signature"
                    header.i=@mail-router.example.net;
                  dkim=fail reason="bad signature"
                    header.i=@newyork.example.com"""
    assert ar.value() == _squash(rfc)
    # it is longer than a line: folded after each resinfo
    field = ar.render()
    assert field.startswith(b"Authentication-Results: example.com;\r\n    dkim=pass")
    assert _squash(_unfold(field)) == _squash("Authentication-Results: " + rfc)


def test_values_quoted_when_not_tokens() -> None:
    assert quote_value("example.net") == "example.net"
    assert quote_value("user@example.net") == "user@example.net"
    assert quote_value("@example.net") == "@example.net"
    assert quote_value("abc/de+f=") == '"abc/de+f="'            # header.b: tspecials
    assert quote_value('say "hi" \\ there') == '"say \\"hi\\" \\\\ there"'
    assert quote_value("user name@example.net") == '"user name@example.net"'
    assert quote_value("") == '""'
    m = MethodResult("dkim", "pass", properties=(("header.d", "example.net"), ("header.s", "sel"),
                                                 ("header.b", "ab/Cd+12")))
    assert m.render() == 'dkim=pass header.d=example.net header.s=sel header.b="ab/Cd+12"'


def test_no_header_injection() -> None:
    m = MethodResult("spf", "fail", reason="bad\r\nX-Evil: yes",
                     properties=(("smtp.mailfrom", "a@b.example\r\nX-Evil: 1"),), comment="x)\r\n(y")
    ar = AuthenticationResults.of("mx.example.org", [m]).render()
    assert ar.count(b"\r\n") == ar.count(b"\r\n ") + 1   # every line break is a fold
    assert b"\r\nX-Evil" not in ar
    assert b"(x\\) \\(y)" in ar
    with pytest.raises(ValueError):
        AuthenticationResults("mx.example.org\r\nX: y")


@pytest.mark.parametrize("method, result, prop", [
    ("sp f", "pass", "smtp.mailfrom"),
    ("spf", "pa=ss", "smtp.mailfrom"),
    ("spf", "pass", "mailfrom"),
    ("spf", "pass", "smtp.mail from"),
])
def test_bad_names_are_refused(method: str, result: str, prop: str) -> None:
    with pytest.raises(ValueError, match="Authentication-Results"):
        MethodResult(method, result, properties=((prop, "x"),))


def test_method_version_allowed() -> None:
    assert MethodResult("dkim/1", "pass").render() == "dkim/1=pass"


def test_long_fields_fold_under_78_and_unfold_to_the_same_value() -> None:
    results = [
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "bounces+123456@mail.example.net"),)),
        MethodResult("dkim", "pass", reason="a reason that is long enough to need folding inside "
                     "its quoted string, which must keep   its spaces exactly as they were",
                     properties=(("header.d", "example.net"), ("header.s", "selector2024"),
                                 ("header.b", "AbCdEfGh"))),
        MethodResult("dmarc", "pass", comment="p=reject sp=quarantine dis=none",
                     properties=(("header.from", "example.net"), ("policy.dmarc", "reject"))),
    ]
    ar = AuthenticationResults.of("mx.pillarbox.example", results)
    field = ar.render()
    lines = field.decode().split("\r\n")
    assert lines[-1] == ""
    assert all(len(line) <= 78 for line in lines)
    assert all(line[:1] in (" ", "\t") for line in lines[1:-1])
    unfolded = _unfold(field)
    # quoted strings survive folding exactly; elsewhere only whitespace may differ
    quoted = re.compile(r'"(?:[^"\\]|\\.)*"')
    assert quoted.findall(unfolded) == quoted.findall(ar.value())
    assert _squash(unfolded) == _squash("Authentication-Results: " + ar.value())
    assert authserv_id(field.split(b":", 1)[1]) == "mx.pillarbox.example"


# -- reading the authserv-id -----------------------------------------------------------

@pytest.mark.parametrize("value, ident", [
    (b" example.com; spf=pass smtp.mailfrom=example.net", "example.com"),
    (b" example.org 1; none", "example.org"),
    (b'  "quoted.example" ; none', "quoted.example"),
    # RFC 8601 B.7: comments everywhere
    (b" foo.example.net (foobar) 1 (baz);\r\n    dkim (Because I like it) / 1 (One yay) = (wait for it) fail",
     "foo.example.net"),
    (b" (a (nested) comment) mx.example.org;none", "mx.example.org"),
    (b" mx.example.org", None),                 # no ";"
    (b" mx.example.org spf=pass", None),
    (b" (never closed mx.example.org; none", None),
    (b' "unterminated; none', None),
    (b" ; none", None),
    (b"", None),
])
def test_authserv_id(value: bytes, ident: str | None) -> None:
    assert authserv_id(value) == ident


def test_is_ours() -> None:
    assert is_ours(b" MX.Example.ORG; spf=pass", "mx.example.org")
    assert not is_ours(b" mx.example.org.evil.example; spf=pass", "mx.example.org")
    assert not is_ours(b" other.example; spf=pass", "mx.example.org")
    # malformed, but starting with ours: removed
    assert is_ours(b" mx.example.org spf=pass", "mx.example.org")
    assert is_ours(b" (comment) mx.example.org", "mx.example.org")
    assert is_ours(b" (unclosed mx.example.org", "mx.example.org") is False
    assert is_ours(b' "mx.example.org', "mx.example.org")


BLOCK = (
    b"Received: from a by b; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=evil.example\r\n"
    b"Authentication-Results: other.example; dkim=pass header.d=example.net\r\n"
    b"authentication-results : (forged) MX.EXAMPLE.ORG 1;\r\n"
    b"\tdkim=pass header.d=paypal.example\r\n"
    b'Authentication-Results: "mx.example.org"; none\r\n'
    b"Authentication-Results: mx.example.org dmarc=pass\r\n"
    b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n"
    b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n"
    b"X-Other: Authentication-Results: mx.example.org; none\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.org; in the body stays\r\n"
)


def test_remove_ours() -> None:
    out = remove_ours(BLOCK, "mx.example.org")
    assert out == (
        b"Received: from a by b; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        b"Authentication-Results: other.example; dkim=pass header.d=example.net\r\n"
        b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n"
        b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n"
        b"X-Other: Authentication-Results: mx.example.org; none\r\n"
        b"Subject: hello\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.org; in the body stays\r\n"
    )
    assert remove_ours(out, "mx.example.org") == out
    assert remove_ours(BLOCK, "nobody.example") == BLOCK


def test_remove_ours_with_lf_lines_and_no_blank_line() -> None:
    block = b"From: a@b.example\nAuthentication-Results: mx.example.org;\n spf=pass\nTo: c@d.example"
    assert remove_ours(block, "MX.example.org") == b"From: a@b.example\nTo: c@d.example"


def test_remove_ours_survives_garbage() -> None:
    junk = bytes(range(256)) * 4 + b"\r\nAuthentication-Results:\r\n\r\n"
    out = remove_ours(junk, "mx.example.org")
    assert out == junk                          # nothing claims to be ours
    assert remove_ours(b"", "mx.example.org") == b""
    assert remove_ours(b"Authentication-Results: mx.example.org; none", "mx.example.org") == b""


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIELD_PIECES = [b"Authentication-Results:", b" mx.example.org", b"MX.EXAMPLE.ORG", b";", b" none",
                b"\r\n", b"\n", b"\r\n ", b"\t", b"(", b")", b'"', b"\\", b" 1", b"spf=pass",
                b"Subject: x", b"\r\n\r\n", b":", b"\xff"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FIELD_PIECES), st.binary(max_size=6)), max_size=40).map(b"".join))
def test_remove_ours_on_anything(block: bytes) -> None:
    out = remove_ours(block, "mx.example.org")
    assert len(out) <= len(block)
    assert remove_ours(out, "mx.example.org") == out      # nothing of ours is left


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_rendered_fields_read_back(reason: str, value: str) -> None:
    ar = AuthenticationResults.of("mx.example.org", [
        MethodResult("spf", "pass", reason=reason, properties=(("smtp.mailfrom", value),))])
    field = ar.render()
    assert field.endswith(b"\r\n") and b"\r\n" not in field[:-2].replace(b"\r\n ", b"")
    assert authserv_id(field.split(b":", 1)[1]) == "mx.example.org"
    assert remove_ours(field, "mx.example.org") == b""


def test_spf_and_dkim_helpers() -> None:
    assert MethodResult.spf("pass", mailfrom="bounce@example.net").render() == (
        "spf=pass smtp.mailfrom=bounce@example.net")
    assert MethodResult.spf("none", helo="mx.example.net").render() == "spf=none smtp.helo=mx.example.net"
    sig = "dGVzdCBzaWduYXR1cmUgdmFsdWU/+abc\r\n  defg=="
    assert MethodResult.dkim("pass", "example.net", "sel", sig).render() == (
        'dkim=pass header.d=example.net header.s=sel header.b=dGVzdCBzaWdu')
    assert MethodResult.dkim("fail", "example.net", reason="body hash mismatch").render() == (
        'dkim=fail reason="body hash mismatch" header.d=example.net')


def test_a_trailing_dot_is_still_ours() -> None:
    assert is_ours(b" mx.example.org.; spf=pass", "mx.example.org")
    assert is_ours(b" mx.example.org; spf=pass", "mx.example.org.")
