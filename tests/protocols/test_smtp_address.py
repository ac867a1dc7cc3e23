"""Tests of the envelope path parser (RFC 5321 §4.1.2, RFC 6531 §3.3)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pillarbox.protocols.smtp.address import Mailbox, parse_path, split_argument
from pillarbox.protocols.smtp.reply import RemoteProtocolError


def fwd(text: str, smtputf8: bool = False) -> Mailbox:
    mailbox = parse_path(text, reverse=False, smtputf8=smtputf8)
    assert mailbox is not None
    return mailbox


def error(text: str, *, reverse: bool = False, smtputf8: bool = False) -> tuple[int, str, str]:
    with pytest.raises(RemoteProtocolError) as info:
        parse_path(text, reverse=reverse, smtputf8=smtputf8)
    reply = info.value.reply
    assert isinstance(reply.text, str)
    return reply.code, reply.status, reply.text


def syntax_error(text: str, *, reverse: bool = False, smtputf8: bool = False) -> str:
    """Assert the syntax reply of the path kind and return its text."""
    code, status, message = error(text, reverse=reverse, smtputf8=smtputf8)
    if reverse:
        assert (code, status) == (501, "5.1.7")
        assert message.startswith("Bad sender address syntax")
    else:
        assert (code, status) == (501, "5.1.3")
        assert message.startswith("Bad recipient address syntax")
    return message


# --- simple mailboxes ------------------------------------------------------


def test_plain_mailbox() -> None:
    mailbox = fwd("<user@example.com>")
    assert mailbox == Mailbox("user", "example.com")
    assert str(mailbox) == "user@example.com"
    assert mailbox.is_ascii and not mailbox.is_literal
    assert mailbox.ascii_domain == "example.com"


def test_reverse_path_mailbox() -> None:
    assert parse_path("<a@b.example>", reverse=True, smtputf8=False) == Mailbox("a", "b.example")


def test_case_is_kept_but_ascii_domain_is_lowered() -> None:
    mailbox = fwd("<John.Doe@Example.COM>")
    assert mailbox == Mailbox("John.Doe", "Example.COM")
    assert mailbox.ascii_domain == "example.com"


@pytest.mark.parametrize(
    "local",
    ["a.b.c", "a+tag", "!#$%&'*+-/=?^_`{|}~", "0", "x-y_z"],
)
def test_dot_string_atext(local: str) -> None:
    assert fwd(f"<{local}@example.com>").local_part == local


@pytest.mark.parametrize(
    "local", [".a", "a.", "a..b", "a b", "a(b)", "a,b", "a[b", "a\\b", "a:b", "a;b", "a<b"]
)
def test_bad_dot_string(local: str) -> None:
    syntax_error(f"<{local}@example.com>")


@pytest.mark.parametrize(
    "domain",
    [
        "example",
        "a.b.c.d",
        "1.example",
        "xn--bcher-kva.example",
        "a-b.example",
        "ab--cd.example",
        "123",
    ],
)
def test_good_domains(domain: str) -> None:
    assert fwd(f"<u@{domain}>").domain == domain


@pytest.mark.parametrize(
    "domain",
    [
        "",
        "-a.example",
        "a-.example",
        "a..b",
        ".a",
        "a.",
        "a_b.example",
        "a b",
        "a@b",
        "x" * 64 + ".example",
    ],
)
def test_bad_domains(domain: str) -> None:
    syntax_error(f"<u@{domain}>")


def test_label_of_63_octets_is_fine() -> None:
    assert fwd(f"<u@{'x' * 63}.example>").domain == "x" * 63 + ".example"


# --- quoted local parts ----------------------------------------------------


def test_quoted_local_part_with_space() -> None:
    mailbox = fwd('<"john doe"@example.com>')
    assert mailbox.local_part == "john doe"
    assert str(mailbox) == '"john doe"@example.com'


def test_quoted_local_part_with_escaped_quote_and_backslash() -> None:
    mailbox = fwd(r'<"a\"b\\c"@example.com>')
    assert mailbox.local_part == 'a"b\\c'
    assert str(mailbox) == r'"a\"b\\c"@example.com'


def test_quoted_pair_of_ordinary_character_is_decoded() -> None:
    mailbox = fwd(r'<"\a\ b"@example.com>')
    assert mailbox.local_part == "a b"
    assert str(mailbox) == '"a b"@example.com'


def test_needless_quotes_are_dropped_on_rendering() -> None:
    mailbox = fwd('<"abc"@example.com>')
    assert mailbox.local_part == "abc"
    assert str(mailbox) == "abc@example.com"


def test_quoted_local_part_with_specials() -> None:
    mailbox = fwd('<"a>b<c@d,e:f;g[h]"@example.com>')
    assert mailbox.local_part == "a>b<c@d,e:f;g[h]"
    assert str(mailbox) == '"a>b<c@d,e:f;g[h]"@example.com'


def test_empty_quoted_local_part() -> None:
    mailbox = fwd('<""@example.com>')
    assert mailbox.local_part == ""
    assert str(mailbox) == '""@example.com'


@pytest.mark.parametrize(
    "text",
    [
        '<"abc@example.com>',  # unterminated
        '<"a"b@example.com>',  # text after the closing quote
        '<a"b"@example.com>',
        '<"a\tb"@example.com>',  # HTAB is not qtextSMTP
        '<"a\x00b"@example.com>',
        '<"a\x7fb"@example.com>',
        '<"a\\\x01"@example.com>',  # quoted-pair of a control
        '<"a\\',
    ],
)
def test_bad_quoted_local_part(text: str) -> None:
    syntax_error(text)


def test_quoted_pair_of_non_ascii_is_refused() -> None:
    # quoted-pairSMTP is %d92 %d32-126; RFC 6531 does not extend it.
    syntax_error('<"\\ü"@example.com>', smtputf8=True)


# --- address literals ------------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [
        "[192.0.2.1]",
        "[0.0.0.0]",
        "[255.255.255.255]",
        "[IPv6:::1]",
        "[IPv6:2001:db8::1]",
        "[ipv6:2001:DB8:0:0:0:0:0:1]",
        "[IPv6:::ffff:192.0.2.1]",
        "[x-tag:any!thing>~]",
        "[Tag:a]",
    ],
)
def test_good_literals(literal: str) -> None:
    mailbox = fwd(f"<postmaster@{literal}>")
    assert mailbox.domain == literal
    assert mailbox.is_literal
    assert mailbox.ascii_domain == literal
    assert str(mailbox) == f"postmaster@{literal}"


@pytest.mark.parametrize(
    "literal",
    [
        "[]",
        "[256.0.0.1]",
        "[1.2.3]",
        "[1.2.3.4.5]",
        "[1.2.3.1234]",
        "[ 1.2.3.4]",
        "[a.b.c.d]",
        "[IPv6:1::2::3]",
        "[IPv6:12345::1]",
        "[IPv6:fe80::1%eth0]",
        "[IPv6:]",
        "[IPv6:192.0.2.1]",
        "[IPv6:1:2:3:4:5:6:7:8:9]",
        "[tag_x:y]",
        "[tag-:x]",
        "[tag:]",
        "[tag:a b]",
        "[tag:a\\b]",
        "[:x]",
        "[192.0.2.1",
        "[tag:ü]",
    ],
)
def test_bad_literals(literal: str) -> None:
    syntax_error(f"<u@{literal}>", smtputf8=True)


def test_literal_is_not_a_route_domain() -> None:
    syntax_error("<@[192.0.2.1]:u@example.com>")


# --- source routes, null path, Postmaster ---------------------------------


def test_source_route_is_ignored() -> None:
    mailbox = fwd("<@a.example,@b.example:user@c.example>")
    assert mailbox == Mailbox("user", "c.example")
    assert str(mailbox) == "user@c.example"


def test_single_hop_source_route() -> None:
    assert fwd("<@a.example:user@c.example>") == Mailbox("user", "c.example")


@pytest.mark.parametrize(
    "text",
    [
        "<@a.example user@c.example>",
        "<@a.example,user@c.example>",
        "<@:user@c.example>",
        "<@a.example,:user@c.example>",
        "<@a.example;@b.example:user@c.example>",
        "<@a.example:>",
        "<@a.example,b.example:user@c.example>",
        "<@-a.example:user@c.example>",
    ],
)
def test_bad_source_routes(text: str) -> None:
    syntax_error(text)
    syntax_error(text, reverse=True)


def test_null_reverse_path() -> None:
    assert parse_path("<>", reverse=True, smtputf8=False) is None
    assert parse_path("<>", reverse=True, smtputf8=True) is None


def test_null_forward_path_is_an_error() -> None:
    syntax_error("<>")


@pytest.mark.parametrize("text", ["< >", "<@a.example:>"])
def test_not_quite_null(text: str) -> None:
    syntax_error(text, reverse=True)


@pytest.mark.parametrize("text", ["<Postmaster>", "<postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_postmaster_without_domain(text: str) -> None:
    mailbox = fwd(text)
    assert mailbox == Mailbox("Postmaster", "")
    assert str(mailbox) == "Postmaster"
    assert mailbox.ascii_domain == ""
    assert mailbox.is_ascii and not mailbox.is_literal


@pytest.mark.parametrize(
    "text", ["<Postmaster>", '<"Postmaster">', "<Postmasters>", "<abuse>", "<Postmaster)"]
)
def test_bare_local_part_is_an_error(text: str) -> None:
    syntax_error(text, reverse=True)
    if text != "<Postmaster>":
        syntax_error(text)


def test_postmaster_with_domain_is_ordinary() -> None:
    assert fwd("<Postmaster@example.com>") == Mailbox("Postmaster", "example.com")


# --- brackets and junk -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "user@example.com",
        "<user@example.com",
        "user@example.com>",
        "<user@example.com> ",
        "<user@example.com>x",
        "<user@example.com>>",
        " <user@example.com>",
        "<user@example.com >",
        "< user@example.com>",
        "<user @example.com>",
        "<user@ example.com>",
        "<<user@example.com>>",
        "<user>",
        "<@example.com>",
        "<user@>",
        "<user@@example.com>",
        "<user@example.com@example.com>",
        "<[192.0.2.1]>",
        "<u@[192.0.2.1]x>",
        "<u@[192.0.2.1]>x",
        "",
        "<",
        ">",
    ],
)
def test_malformed_paths(text: str) -> None:
    syntax_error(text)
    syntax_error(text, reverse=True)


def test_lone_surrogate_is_a_syntax_error() -> None:
    syntax_error("<u\udcff@example.com>", smtputf8=True)


def test_error_text_is_specific() -> None:
    assert "'>'" in syntax_error("<user@example.com> x")


# --- SMTPUTF8 (RFC 6531) ---------------------------------------------------


def test_utf8_local_part() -> None:
    mailbox = fwd("<jöran@example.com>", smtputf8=True)
    assert mailbox == Mailbox("jöran", "example.com")
    assert not mailbox.is_ascii
    assert str(mailbox) == "jöran@example.com"


def test_utf8_quoted_local_part() -> None:
    mailbox = fwd('<"jö ran"@example.com>', smtputf8=True)
    assert mailbox.local_part == "jö ran"
    assert str(mailbox) == '"jö ran"@example.com'


def test_cjk_local_part_and_domain() -> None:
    mailbox = fwd("<用户@例子.广告>", smtputf8=True)
    assert mailbox == Mailbox("用户", "例子.广告")
    assert mailbox.ascii_domain == "xn--fsqu00a.xn--4rr70v"


def test_idn_domain_keeps_u_labels() -> None:
    mailbox = fwd("<user@Bücher.example>", smtputf8=True)
    assert mailbox.domain == "Bücher.example"
    assert mailbox.ascii_domain == "xn--bcher-kva.example"
    assert not mailbox.is_ascii


def test_ascii_labels_next_to_u_labels_stay_ldh() -> None:
    # RFC 5321 allows "ab--cd" although IDNA2008 would refuse it as a label.
    assert fwd("<u@ab--cd.bücher.example>", smtputf8=True).ascii_domain == (
        "ab--cd.xn--bcher-kva.example"
    )


@pytest.mark.parametrize(
    "text",
    [
        "<jöran@example.com>",
        "<user@bücher.example>",
        '<"jö ran"@example.com>',
        "<@bücher.example:user@example.com>",
        "<用户@例子.广告>",
    ],
)
def test_non_ascii_needs_smtputf8(text: str) -> None:
    for reverse in (False, True):
        assert error(text, reverse=reverse) == (
            553,
            "5.6.7",
            "Non-ASCII address requires SMTPUTF8 (RFC 6531)",
        )


@pytest.mark.parametrize(
    "domain",
    [
        "-bücher.example",  # leading hyphen
        "bücher-.example",
        "a\u3002b\u00e9.example",  # ideographic full stop: not one label
        "\u00ad.example",  # maps to nothing
        "\u0301a.example",  # leading combining mark
        "\u2603\u0000.example",
        "ü" * 60 + ".example",  # A-label longer than 63
    ],
)
def test_invalid_idn_domain(domain: str) -> None:
    code, status, _ = error(f"<u@{domain}>", smtputf8=True)
    assert code in (501, 553)
    assert status == "5.1.3"
    code, status, _ = error(f"<u@{domain}>", reverse=True, smtputf8=True)
    assert status == "5.1.7"


def test_invalid_idn_domain_is_553() -> None:
    assert error("<u@\u0301a.example>", smtputf8=True)[:2] == (553, "5.1.3")
    assert error("<u@\u0301a.example>", reverse=True, smtputf8=True)[:2] == (553, "5.1.7")


def test_invalid_idn_route_domain_is_refused() -> None:
    assert error("<@\u0301a.example:u@example.com>", smtputf8=True)[:2] == (553, "5.1.3")


# --- length limits (RFC 5321 4.5.3.1) ---------------------------------------


def test_local_part_of_64_octets() -> None:
    assert fwd(f"<{'a' * 64}@example.com>").local_part == "a" * 64


def test_local_part_too_long() -> None:
    message = syntax_error(f"<{'a' * 65}@example.com>")
    assert "local part too long (RFC 5321 4.5.3.1.1)" in message.lower().replace("rfc", "RFC")
    syntax_error(f"<{'a' * 65}@example.com>", reverse=True)


def test_local_part_measured_in_utf8_octets() -> None:
    assert fwd(f"<{'ö' * 32}@example.com>", smtputf8=True)
    assert "local part too long" in syntax_error(f"<{'ö' * 33}@example.com>", smtputf8=True)


def test_quoted_local_part_is_measured_as_written() -> None:
    assert fwd(f'<"{"a" * 62}"@example.com>')
    assert "local part too long" in syntax_error(f'<"{"a" * 63}"@example.com>')


def test_domain_of_255_octets_but_path_too_long() -> None:
    domain = ".".join(["d" * 63] * 4)  # 255 octets
    assert len(domain) == 255
    assert "path too long" in syntax_error(f"<u@{domain}>")


def test_domain_too_long() -> None:
    domain = ".".join(["d" * 63] * 4) + ".e"  # 257 octets
    assert "domain too long" in syntax_error(f"<u@{domain}>")


def test_path_of_256_octets() -> None:
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 52])
    text = f"<{'u' * 9}@{domain}>"
    assert len(text) == 256
    assert fwd(text).domain == domain
    assert "path too long" in syntax_error(f"<{'u' * 10}@{domain}>")


def test_source_route_counts_toward_path_length() -> None:
    domain = ".".join(["d" * 63, "d" * 63, "d" * 63, "d" * 52])
    assert fwd(f"<{'u' * 9}@{domain}>")
    assert "path too long" in syntax_error(f"<@r:{'u' * 9}@{domain}>")


# --- Mailbox ---------------------------------------------------------------


def test_mailbox_is_a_frozen_value() -> None:
    mailbox = Mailbox("a", "b")
    with pytest.raises(AttributeError):
        mailbox.local_part = "c"  # type: ignore[misc]
    assert mailbox == Mailbox("a", "b")
    assert hash(mailbox) == hash(Mailbox("a", "b"))


def test_ascii_domain_of_ipv6_literal_unchanged() -> None:
    assert Mailbox("a", "[IPv6:::1]").ascii_domain == "[IPv6:::1]"


# --- split_argument --------------------------------------------------------


def split(arg: str, keyword: str = "FROM") -> tuple[str, str]:
    return split_argument(arg, keyword)


def split_error(arg: str, keyword: str = "FROM") -> None:
    with pytest.raises(RemoteProtocolError) as info:
        split_argument(arg, keyword)
    assert (info.value.reply.code, info.value.reply.status) == (501, "5.5.4")


def test_split_simple() -> None:
    assert split("FROM:<a@b> SIZE=10") == ("<a@b>", "SIZE=10")
    assert split("TO:<a@b>", "TO") == ("<a@b>", "")


def test_split_keyword_is_case_insensitive() -> None:
    assert split("from:<a@b>") == ("<a@b>", "")
    assert split("To:<a@b>", "to") == ("<a@b>", "")


def test_split_tolerates_spaces_after_colon() -> None:
    assert split("FROM: <a@b>") == ("<a@b>", "")
    assert split("FROM:   <a@b>  SIZE=1 BODY=7BIT  ") == ("<a@b>", "SIZE=1 BODY=7BIT")


def test_split_null_path() -> None:
    assert split("FROM:<> SIZE=1") == ("<>", "SIZE=1")


def test_split_quoted_local_part_with_gt_and_space() -> None:
    assert split('FROM:<"a> b"@example.com> SIZE=1') == ('<"a> b"@example.com>', "SIZE=1")


def test_split_escaped_quote_in_quoted_local_part() -> None:
    assert split(r'FROM:<"a\" >x"@example.com> BODY=8BITMIME') == (
        r'<"a\" >x"@example.com>',
        "BODY=8BITMIME",
    )


def test_split_general_literal_with_gt() -> None:
    assert split("TO:<u@[x-tag:a>b]> NOTIFY=NEVER", "TO") == ("<u@[x-tag:a>b]>", "NOTIFY=NEVER")


def test_split_unterminated_path_is_left_to_parse_path() -> None:
    path, params = split("FROM:<a@b SIZE=10")
    assert (path, params) == ("<a@b SIZE=10", "")
    with pytest.raises(RemoteProtocolError) as info:
        parse_path(path, reverse=True, smtputf8=False)
    assert info.value.reply.status == "5.1.7"


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "FROM",
        "FROM:",
        "FROM: ",
        "FROM :<a@b>",
        "FROM<a@b>",
        " FROM:<a@b>",
        "FROMX:<a@b>",
        "TO:<a@b>",
        "FROM:a@b",
        "FROM:a@b>",
        "FROM:<a@b>SIZE=10",
        "FROM:<a@b>>",
        "\uff26\uff32\uff2f\uff2d:<a@b>",  # fullwidth FROM
    ],
)
def test_split_errors(arg: str) -> None:
    split_error(arg)


def test_split_then_parse_rcpt_postmaster() -> None:
    path, params = split("TO:<postmaster>", "TO")
    assert parse_path(path, reverse=False, smtputf8=False) == Mailbox("Postmaster", "")
    assert params == ""


# --- properties ------------------------------------------------------------

_LOCAL_CHARS = st.sampled_from(list('aZ09.!#+-_~"\\ ()<>[]@,;:ö用\t\x00é'))
_IDNA_REFUSES = ["-ü", "\u0301a"]
_LABELS = st.sampled_from(
    [
        "example",
        "a",
        "x-y",
        "ab--cd",
        "1",
        "bücher",
        "例子",
        "-bad",
        "BÜCHER",
        "a_b",
        *_IDNA_REFUSES,
    ]
)
_LITERALS = st.sampled_from(
    ["[192.0.2.1]", "[IPv6:::1]", "[IPv6:2001:db8::1]", "[x:y>z]", "[300.1.1.1]", "[IPv6:zz]"]
)


@st.composite
def path_texts(draw: st.DrawFn) -> str:
    """Texts shaped like paths, many valid, many subtly not."""
    local = draw(st.text(_LOCAL_CHARS, max_size=12))
    if draw(st.booleans()):
        escaped = local.replace("\\", "\\\\").replace('"', '\\"')
        local = f'"{escaped}"'
    if draw(st.booleans()):
        domain = draw(_LITERALS)
    else:
        domain = ".".join(draw(st.lists(_LABELS, min_size=1, max_size=4)))
    route = ""
    if draw(st.integers(0, 4)) == 0:
        route = ",".join("@" + draw(_LABELS) for _ in range(draw(st.integers(1, 2)))) + ":"
    return f"<{route}{local}@{domain}>"


def _parse_all_ways(text: str) -> None:
    """Parse ``text`` every way; only RemoteProtocolError may escape, and round trips hold."""
    for reverse in (False, True):
        for smtputf8 in (False, True):
            try:
                mailbox = parse_path(text, reverse=reverse, smtputf8=smtputf8)
            except RemoteProtocolError:
                continue
            if mailbox is None:
                assert reverse and text == "<>"
                continue
            assert smtputf8 or mailbox.is_ascii
            assert mailbox.ascii_domain.isascii()  # never raises for a parsed mailbox
            again = parse_path(f"<{mailbox}>", reverse=reverse, smtputf8=smtputf8)
            assert again == mailbox


@given(path_texts())
@example('<"a\\"b"@example.com>')
@example("<Postmaster>")
@example("<>")
def test_path_like_text_parses_or_is_refused(text: str) -> None:
    _parse_all_ways(text)


@given(st.text())
def test_arbitrary_text_parses_or_is_refused(text: str) -> None:
    _parse_all_ways(text)
    _parse_all_ways("<" + text + ">")


@given(st.text(), st.sampled_from(["FROM", "TO"]))
def test_split_argument_on_arbitrary_text(text: str, keyword: str) -> None:
    for arg in (text, f"{keyword}:{text}", f"{keyword}:<{text}"):
        try:
            path, params = split_argument(arg, keyword)
        except RemoteProtocolError:
            continue
        assert path.startswith("<")
        assert not params.startswith(" ")
        _parse_all_ways(path)


@given(path_texts(), st.text(st.sampled_from("SIZE=1 BODY8"), max_size=12))
def test_split_argument_finds_the_path(path: str, params: str) -> None:
    params = params.strip(" ")
    arg = f"TO:{path} {params}" if params else f"TO:{path}"
    try:
        parse_path(path, reverse=False, smtputf8=True)
    except RemoteProtocolError:
        return
    assert split_argument(arg, "TO") == (path, params)


@given(
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.sampled_from(["example.com", "[192.0.2.1]", "bücher.example", "[IPv6:::1]"]),
)
def test_any_local_part_renders_and_round_trips(local: str, domain: str) -> None:
    mailbox = Mailbox(local, domain)
    written_local = str(mailbox)[: -len(domain) - 1]
    # Only ASCII controls and the length limit make a local part unrepresentable.
    representable = (
        not any(ord(c) < 32 or ord(c) == 127 for c in local) and len(written_local.encode()) <= 64
    )
    if representable:
        assert parse_path(f"<{mailbox}>", reverse=False, smtputf8=True) == mailbox
    else:
        with pytest.raises(RemoteProtocolError):
            parse_path(f"<{mailbox}>", reverse=False, smtputf8=True)
