"""Tests of the MAIL/RCPT parameter parsers (RFC 5321 §4.1.2, RFC 1870, 3461, 6152, 6531, 6533)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.protocols.smtp.params import (
    MailParams,
    RcptParams,
    parse_mail_params,
    parse_params,
    parse_rcpt_params,
    utf8_addr_decode,
    utf8_addr_encode,
    xtext_decode,
    xtext_encode,
)
from pillarbox.protocols.smtp.reply import RemoteProtocolError


def reply_of(fn, *args, **kwargs) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args, **kwargs)
    reply = info.value.reply
    assert isinstance(reply.text, str)
    return reply.code, reply.status, reply.text


def mail(text: str, max_size: int = 0) -> MailParams:
    return parse_mail_params(parse_params(text), max_size=max_size)


def rcpt(text: str) -> RcptParams:
    return parse_rcpt_params(parse_params(text))


def mail_error(text: str, max_size: int = 0) -> tuple[int, str]:
    return reply_of(mail, text, max_size)[:2]


def rcpt_error(text: str) -> tuple[int, str]:
    return reply_of(rcpt, text)[:2]


# --- parse_params ----------------------------------------------------------


def test_parse_params_example() -> None:
    assert parse_params("SIZE=100 BODY=8BITMIME SMTPUTF8") == [
        ("SIZE", "100"),
        ("BODY", "8BITMIME"),
        ("SMTPUTF8", None),
    ]


def test_parse_params_empty() -> None:
    assert parse_params("") == []
    assert parse_params("   ") == []


def test_parse_params_upper_cases_keywords_not_values() -> None:
    assert parse_params("size=1 body=8bitmime x-Foo=BaR") == [
        ("SIZE", "1"),
        ("BODY", "8bitmime"),
        ("X-FOO", "BaR"),
    ]


def test_parse_params_tolerates_several_spaces() -> None:
    assert parse_params("  SIZE=1    BODY=7BIT  ") == [("SIZE", "1"), ("BODY", "7BIT")]


def test_parse_params_keyword_may_start_with_digit_and_contain_hyphen() -> None:
    assert parse_params("9X-Y-=a") == [("9X-Y-", "a")]


def test_parse_params_value_may_hold_specials_and_utf8() -> None:
    assert parse_params("ORCPT=rfc822;a+40b<>!~ X=ü") == [("ORCPT", "rfc822;a+40b<>!~"), ("X", "ü")]


@pytest.mark.parametrize(
    "text",
    [
        "=1",
        "-X=1",
        "SIZE=",
        "SIZE==1",
        "SIZE=1=2",
        "SI_ZE=1",
        "SIZE=1\tBODY=7BIT",
        "SIZE=\x00",
        "SIZE=a\x7f",
        "SIZE=1,\r\n",
        "ÜBER=1",
        "X=\udcff",
    ],
)
def test_parse_params_syntax_errors(text: str) -> None:
    assert reply_of(parse_params, text)[:2] == (501, "5.5.4")


# --- MAIL parameters ------------------------------------------------------


def test_mail_no_params() -> None:
    assert mail("") == MailParams()


def test_mail_all_params() -> None:
    assert mail("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159+2Bx", 10_000) == (
        MailParams(size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ314159+x")
    )


def test_mail_values_are_case_insensitive() -> None:
    assert mail("body=8bitmime ret=full") == MailParams(body="8BITMIME", ret="FULL")
    assert mail("BODY=7bit").body == "7BIT"


def test_size_limits() -> None:
    assert mail("SIZE=0").size == 0
    assert mail("SIZE=100", max_size=100).size == 100
    assert mail("SIZE=" + "9" * 20, max_size=0).size == 10**20 - 1
    assert mail("SIZE=007").size == 7


def test_size_too_big() -> None:
    assert reply_of(mail, "SIZE=101", 100) == (
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    )


@pytest.mark.parametrize("value", ["-1", "+1", "1.5", "1e3", "0x10", "١٢", "1" * 21, "ten"])
def test_size_not_a_number(value: str) -> None:
    assert mail_error(f"SIZE={value}") == (501, "5.5.4")


def test_size_without_value() -> None:
    assert mail_error("SIZE") == (501, "5.5.4")


@pytest.mark.parametrize("value", ["BINARYMIME", "8BIT", "7", "8BITMIMEX"])
def test_bad_body(value: str) -> None:
    assert mail_error(f"BODY={value}") == (501, "5.5.4")
    assert mail_error("BODY") == (501, "5.5.4")


def test_smtputf8_with_value() -> None:
    assert mail_error("SMTPUTF8=yes") == (501, "5.5.4")


@pytest.mark.parametrize("text", ["RET=ALL", "RET=HDR", "RET"])
def test_bad_ret(text: str) -> None:
    assert mail_error(text) == (501, "5.5.4")


def test_envid_of_100_characters() -> None:
    assert mail("ENVID=" + "e" * 100).envid == "e" * 100
    assert mail("ENVID=" + "+2B" * 33 + "e").envid == "+" * 33 + "e"


@pytest.mark.parametrize("value", ["e" * 101, "a+2", "a+2b", "a+ZZ", "ü", "a+", "+C3"])
def test_bad_envid(value: str) -> None:
    assert mail_error(f"ENVID={value}") == (501, "5.5.4")


def test_envid_without_value() -> None:
    assert mail_error("ENVID") == (501, "5.5.4")


@pytest.mark.parametrize(
    "keyword", ["AUTH=<>", "BY=100;R", "MT-PRIORITY=3", "XFOO", "NOTIFY=NEVER"]
)
def test_mail_unknown_parameter(keyword: str) -> None:
    name = keyword.split("=")[0]
    assert reply_of(mail, keyword) == (555, "5.5.4", f"Unsupported parameter: {name}")


@pytest.mark.parametrize("text", ["SIZE=1 SIZE=1", "BODY=7BIT body=8BITMIME", "SMTPUTF8 SMTPUTF8"])
def test_mail_duplicate_parameter(text: str) -> None:
    assert mail_error(text) == (501, "5.5.4")


def test_mail_params_from_a_list_with_lower_case_keywords() -> None:
    assert parse_mail_params([("size", "5"), ("smtputf8", None)], max_size=0) == MailParams(
        size=5, smtputf8=True
    )


# --- RCPT parameters -------------------------------------------------------


def test_rcpt_no_params() -> None:
    assert rcpt("") == RcptParams()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NEVER", ("NEVER",)),
        ("never", ("NEVER",)),
        ("SUCCESS", ("SUCCESS",)),
        ("DELAY,FAILURE", ("FAILURE", "DELAY")),
        ("delay,success,Failure", ("SUCCESS", "FAILURE", "DELAY")),
    ],
)
def test_notify(value: str, expected: tuple[str, ...]) -> None:
    assert rcpt(f"NOTIFY={value}").notify == expected


@pytest.mark.parametrize(
    "value",
    [
        "NEVER,SUCCESS",
        "SUCCESS,NEVER",
        "NEVER,NEVER",
        "SUCCESS,SUCCESS",
        "SUCCESS,failure,Success",
        "ALWAYS",
        "SUCCESS,",
        ",SUCCESS",
        "SUCCESS,,DELAY",
    ],
)
def test_bad_notify(value: str) -> None:
    assert rcpt_error(f"NOTIFY={value}") == (501, "5.5.4")


def test_notify_without_value() -> None:
    assert rcpt_error("NOTIFY") == (501, "5.5.4")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("rfc822;user@example.com", ("rfc822", "user@example.com")),
        ("RFC822;a+2Bb@example.com", ("rfc822", "a+b@example.com")),
        ("rfc822;+22a+20b+22@example.com", ("rfc822", '"a b"@example.com')),
        ("rfc822;", ("rfc822", "")),
        ("x-local;j+C3+B6e", ("x-local", "jöe")),
        ("UTF-8;j\\x{F6}e@example.com", ("utf-8", "jöe@example.com")),
        ("utf-8;jöe@example.com", ("utf-8", "jöe@example.com")),
        ("utf-8;\\x{22}a\\x{20}b\\x{22}@x", ("utf-8", '"a b"@x')),
        ("utf-8;\\x{1F600}@x", ("utf-8", "\U0001f600@x")),
    ],
)
def test_orcpt(value: str, expected: tuple[str, str]) -> None:
    assert rcpt(f"ORCPT={value}").orcpt == expected


@pytest.mark.parametrize(
    "value",
    [
        "user@example.com",  # no ';'
        ";user@example.com",  # empty addr-type
        "rfc,822;user@example.com",  # ',' is not atext
        "rfc(822);user@example.com",  # not an atom
        "rfc822;user+4@example.com",  # truncated hexchar
        "rfc822;user+2b@example.com",  # lower-case hex
        "rfc822;jöe@example.com",  # non-ASCII in xtext
        "rfc822;+FF",  # not UTF-8 once decoded
        "utf-8;",  # utf-8-addr-xtext is 1*
        "utf-8;a+b@x",  # '+' must be embedded
        "utf-8;a\\b@x",  # bare backslash
        "utf-8;\\x{}@x",
        "utf-8;\\x{f6}@x",  # lower-case hex
        "utf-8;\\x{D800}@x",  # surrogate
        "utf-8;\\x{110000}@x",
        "utf-8;\\x{0}@x",
        "utf-8;\\x{1234567}@x",
        "rfc822;" + "a" * 494,  # 501 characters
    ],
)
def test_bad_orcpt(value: str) -> None:
    assert rcpt_error(f"ORCPT={value}") == (501, "5.5.4")


def test_orcpt_of_500_characters() -> None:
    assert rcpt("ORCPT=rfc822;" + "a" * 493).orcpt == ("rfc822", "a" * 493)


def test_orcpt_without_value() -> None:
    assert rcpt_error("ORCPT") == (501, "5.5.4")


def test_rcpt_both() -> None:
    assert rcpt("NOTIFY=FAILURE ORCPT=rfc822;a@b") == RcptParams(
        notify=("FAILURE",), orcpt=("rfc822", "a@b")
    )


@pytest.mark.parametrize("text", ["NOTIFY=NEVER NOTIFY=NEVER", "ORCPT=rfc822;a ORCPT=rfc822;b"])
def test_rcpt_duplicate_parameter(text: str) -> None:
    assert rcpt_error(text) == (501, "5.5.4")


@pytest.mark.parametrize("keyword", ["SIZE=1", "RRVS=2030-01-01T00:00:00Z", "X"])
def test_rcpt_unknown_parameter(keyword: str) -> None:
    name = keyword.split("=")[0]
    assert reply_of(rcpt, keyword) == (555, "5.5.4", f"Unsupported parameter: {name}")


# --- xtext -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("", ""),
        ("abc", "abc"),
        ("a+2Bb", "a+b"),
        ("+3D", "="),
        ("+20+09+0D+0A", " \t\r\n"),
        ("+41", "A"),  # needless but valid
        ("+C3+BC", "ü"),
    ],
)
def test_xtext_decode(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded


@pytest.mark.parametrize("bad", ["+", "+2", "+2b", "+g0", "a b", "a=b", "ü", "\x00", "+C3", "+FF"])
def test_xtext_decode_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


def test_xtext_encode() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("ü") == "+C3+BC"
    assert xtext_encode("!~") == "!~"


@given(st.text(st.characters(codec="utf-8")))
def test_xtext_round_trip(s: str) -> None:
    encoded = xtext_encode(s)
    assert encoded.isascii()
    assert xtext_decode(encoded) == s


@given(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_utf8_addr_round_trip(s: str) -> None:
    if "\x00" in s:
        return
    for ascii_only in (True, False):
        encoded = utf8_addr_encode(s, ascii_only=ascii_only)
        assert encoded.isascii() or not ascii_only
        assert utf8_addr_decode(encoded) == s
        assert rcpt(f"ORCPT=utf-8;{encoded}").orcpt == ("utf-8", s)


# --- properties: only RemoteProtocolError escapes --------------------------

_PARAM_WORDS = st.sampled_from(
    [
        "SIZE=10",
        "SIZE=x",
        "SIZE",
        "BODY=8BITMIME",
        "BODY=7bit",
        "BODY=x",
        "SMTPUTF8",
        "SMTPUTF8=1",
        "RET=FULL",
        "RET=x",
        "ENVID=a+2B",
        "ENVID=+2",
        "NOTIFY=NEVER",
        "NOTIFY=SUCCESS,DELAY",
        "NOTIFY=,",
        "ORCPT=rfc822;a@b",
        "ORCPT=utf-8;\\x{FF}",
        "ORCPT=utf-8;\\x{D800}",
        "ORCPT=;",
        "X-FOO",
        "=",
        "ü=ü",
        "",
        " ",
    ]
)


def _interpret(text: str, max_size: int) -> None:
    try:
        params = parse_params(text)
    except RemoteProtocolError:
        return
    for keyword, value in params:
        assert keyword == keyword.upper() and keyword.isascii()
        assert value is None or value
    for parse in (
        lambda: parse_mail_params(params, max_size=max_size),
        lambda: parse_rcpt_params(params),
    ):
        with contextlib.suppress(RemoteProtocolError):
            parse()


@given(st.text(), st.integers(0, 10**6))
def test_arbitrary_text_only_raises_protocol_errors(text: str, max_size: int) -> None:
    _interpret(text, max_size)


@given(st.lists(_PARAM_WORDS, max_size=6), st.integers(0, 20))
def test_param_like_text_only_raises_protocol_errors(words: list[str], max_size: int) -> None:
    _interpret(" ".join(words), max_size)


@given(st.lists(st.tuples(st.text(max_size=8), st.none() | st.text(max_size=30)), max_size=4))
def test_arbitrary_param_lists_only_raise_protocol_errors(
    params: list[tuple[str, str | None]],
) -> None:
    for parse in (
        lambda: parse_mail_params(params, max_size=100),
        lambda: parse_rcpt_params(params),
    ):
        with contextlib.suppress(RemoteProtocolError):
            parse()
