"""Hypothesis strategies shared by the tests, all in one place.

For the SMTP server core (``tests/fuzz/test_smtp_server_fuzz.py``):

- ``any_bytes()``: anything at all, with SMTP fragments mixed in;
- ``command_lines()``: plausible command lines, valid or mutated, with random
  line endings;
- ``data_bodies()``: DATA content with random line endings, dot lines and the
  smuggling patterns, ending (usually) with the real terminator;
- ``well_formed_messages()``: ``(wire, content)`` pairs, the dot-stuffed DATA
  form of a message and the content RFC 5321 4.5.2 says the server keeps;
- ``bdat_transfers()``: a message cut into BDAT chunks;
- ``sessions()``: a whole client side: commands and transactions in a row;
- ``pieces(data)``: ``data`` cut at random points, as TCP may deliver it.
"""

from __future__ import annotations

from hypothesis import strategies as st

# ------------------------------------------------------------------- bytes

SMTP_FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b"\r\n.\r\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b".", b"..",
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<c@d.test>\r\n",
    b"DATA\r\n", b"BDAT 3\r\n", b"BDAT 0 LAST\r\n", b"RSET\r\n", b"STARTTLS\r\n", b"QUIT\r\n",
    b"Received: x\r\n", b" ", b":", b"<", b">", b"@", b"\x00", b"\xff", b"\xc3\xa9", b"SMTPUTF8",
]


def any_bytes(max_size: int = 60) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, often with SMTP fragments in them."""
    return st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.one_of(st.sampled_from(SMTP_FRAGMENTS), st.binary(max_size=12)), max_size=max_size
        ).map(b"".join),
    )


@st.composite
def pieces(draw: st.DrawFn, data: bytes, max_cuts: int = 30) -> list[bytes]:
    """``data`` cut at random points (empty pieces included: a read of zero bytes)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# ---------------------------------------------------------------- commands

# Mostly CRLF: a bare CR or LF, or none, now and then.
LINE_ENDINGS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r", b""]

LOCAL_PARTS = ["alice", "bob", "unknown", "unknown.user", "a.b-c", '"j doe"', '"a\\"b"', "jörg",
               "x" * 70, "", "a..b", "Postmaster"]
DOMAINS = ["example.test", "mx.example.test", "[192.0.2.1]", "[IPv6:2001:db8::1]", "bücher.test",
           "xn--bcher-kva.test", "-bad.test", "a" * 70 + ".test", "[300.1.1.1]", "", "ex ample"]
MAIL_PARAMS = ["SIZE=100", "SIZE=1000000000", "SIZE=x", "SIZE", "BODY=8BITMIME", "BODY=7BIT",
               "BODY=BINARYMIME", "SMTPUTF8", "SMTPUTF8=yes", "RET=HDRS", "RET=FULL", "RET=ALL",
               "ENVID=abc+2Bdef", "ENVID=+ZZ", "AUTH=<>", "FOO", "=x", "size=10"]
RCPT_PARAMS = ["NOTIFY=NEVER", "NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER,DELAY", "NOTIFY=",
               "ORCPT=rfc822;bob+40example.test", "ORCPT=utf-8;j\\x{F6}rg@example.test",
               "ORCPT=rfc822", "ORCPT=;x", "FOO=1"]
VERBS = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
         "HELP", "STARTTLS", "TURN", "ETRN", "AUTH", "XYZZY", ""]


def addresses() -> st.SearchStrategy[str]:
    mailbox = st.builds(lambda l, d: f"<{l}@{d}>", st.sampled_from(LOCAL_PARTS),
                        st.sampled_from(DOMAINS))
    odd = st.sampled_from(["<>", "<Postmaster>", "<postmaster>", "<@r.test:a@b.test>", "a@b.test",
                           "<a@b.test", "<a@b.test>>", "<\"unterminated@x>", "<[1.2.3.4]>"])
    return st.one_of(mailbox, mailbox, odd)


def _params(choices: list[str]) -> st.SearchStrategy[str]:
    words = st.lists(st.sampled_from(choices), max_size=3)
    return words.map(lambda ps: "".join(" " + p for p in ps))


def command_texts() -> st.SearchStrategy[str]:
    """A command line without its line ending: valid most of the time."""
    domain = st.sampled_from(["client.test", "[192.0.2.9]", "bücher.test", "", "a b"])
    return st.one_of(
        st.builds(lambda v, d: f"{v} {d}", st.sampled_from(["EHLO", "HELO", "ehlo"]), domain),
        st.builds(lambda a, p: f"MAIL FROM:{a}{p}", addresses(), _params(MAIL_PARAMS)),
        st.builds(lambda a, p: f"RCPT TO:{a}{p}", addresses(), _params(RCPT_PARAMS)),
        st.sampled_from(["DATA", "DATA x", "RSET", "NOOP", "NOOP x", "VRFY bob", "VRFY", "EXPN x",
                         "HELP", "STARTTLS", "QUIT", "TURN", "", "BDAT", "BDAT x", "BDAT 1 2"]),
        st.builds(lambda v, a: f"{v} {a}", st.sampled_from(VERBS), st.text(max_size=20)),
    )


def mutate(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a byte inserted, dropped or changed, or its case flipped."""
    if not data:
        return st.binary(max_size=3)
    i = st.integers(0, len(data) - 1)
    return st.one_of(
        st.builds(lambda n, b: data[:n] + bytes([b]) + data[n:], i, st.integers(0, 255)),
        st.builds(lambda n: data[:n] + data[n + 1 :], i),
        st.builds(lambda n, b: data[:n] + bytes([b]) + data[n + 1 :], i, st.integers(0, 255)),
        st.just(data.swapcase()),
        st.builds(lambda n: data[:n], i),
    )


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """One command line with its line ending; now and then mutated."""
    line = draw(command_texts()).encode()
    if draw(st.integers(0, 5)) == 0:
        line = draw(mutate(line))
    return line + draw(st.sampled_from(LINE_ENDINGS))


# -------------------------------------------------------------- message text

TEXT_LINES = [b"", b".", b"..", b"...", b". ", b".x", b"x.", b"Subject: hello", b"From: a@b.test",
              b"Received: from x by y", b"received:", b"MAIL FROM:<evil@x.test>", b"QUIT", b" ",
              b"\xc3\xa9t\xc3\xa9", b"\x00\x01\x7f", b"x" * 200]


def text_lines() -> st.SearchStrategy[bytes]:
    """One line of message text, without any CR or LF."""
    free = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    return st.one_of(st.sampled_from(TEXT_LINES), free)


@st.composite
def well_formed_messages(draw: st.DrawFn, max_lines: int = 40) -> tuple[bytes, bytes]:
    """``(wire, content)``: ``wire`` is the DATA content as sent, dot-stuffed and ended by
    ``.CRLF`` (RFC 5321 4.5.2), ``content`` the message the server must keep."""
    lines = draw(st.lists(text_lines(), max_size=max_lines))
    content = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n" for line in lines)
    return wire + b".\r\n", content


# The ends of DATA that RFC 5321 does not allow, and the one it does.
FAKE_ENDS = [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r", b"\r\n.\r\r\n"]


@st.composite
def data_bodies(draw: st.DrawFn) -> bytes:
    """DATA content with random line endings and fake ends; usually ended by CRLF.CRLF."""
    parts = []
    for line in draw(st.lists(text_lines(), max_size=20)):
        parts.append(line)
        parts.append(draw(st.sampled_from(LINE_ENDINGS + FAKE_ENDS[:2])))
    body = b"".join(parts)
    end = draw(st.sampled_from([b"\r\n.\r\n"] * 6 + FAKE_ENDS + [b""]))
    if not body.endswith(b"\r\n") or end != b"\r\n.\r\n":
        return body + end
    return body + b".\r\n"


@st.composite
def bdat_transfers(draw: st.DrawFn, content: bytes | None = None) -> bytes:
    """BDAT commands carrying ``content`` (or random text) in chunks, the last one LAST."""
    if content is None:
        content = draw(st.one_of(data_bodies(), well_formed_messages().map(lambda wc: wc[1])))
    chunks = draw(pieces(content, max_cuts=4))
    out = [b"BDAT %d\r\n" % len(chunk) + chunk for chunk in chunks[:-1]]
    last = chunks[-1]
    if draw(st.booleans()) and last:
        out.append(b"BDAT %d\r\n" % len(last) + last + b"BDAT 0 LAST\r\n")
    else:
        out.append(b"BDAT %d LAST\r\n" % len(last) + last)
    return b"".join(out)


# ------------------------------------------------------------------ sessions

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<alice@example.test>\r\n"


@st.composite
def transactions(draw: st.DrawFn) -> bytes:
    """MAIL, some RCPT (some refused by the test policy), then DATA or BDAT."""
    rcpts = draw(st.lists(st.sampled_from([b"bob", b"carol", b"unknown1"]), min_size=1, max_size=4))
    out = MAIL + b"".join(b"RCPT TO:<%s@example.test>\r\n" % r for r in rcpts)
    if draw(st.booleans()):
        wire = well_formed_messages().map(lambda w: w[0])
        out += b"DATA\r\n" + draw(st.one_of(data_bodies(), wire))
    else:
        out += draw(bdat_transfers())
    return out


@st.composite
def sessions(draw: st.DrawFn, max_steps: int = 12) -> bytes:
    """A client's whole output: EHLO (usually), then commands and transactions."""
    steps = [EHLO] if draw(st.integers(0, 9)) else []
    steps += draw(st.lists(st.one_of(command_lines(), transactions(), any_bytes(8)),
                           max_size=max_steps))
    return b"".join(steps)
