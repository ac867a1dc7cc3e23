"""Property tests of the SMTP server core (``pillarbox.protocols.smtp.server``).

The invariant, after h11's: whatever bytes arrive, cut into whatever pieces,

1. the core raises nothing: every client error is answered with a reply, and
   any exception escaping ``receive_data``/``next_event``/``respond`` is a bug;
2. everything it sends is well-formed replies: each line is ``\\d{3}[ -]text``
   ending in CRLF, the code in 2xx-5xx, the lines of a multi-line reply share
   their code, and nothing follows the 221 or 421 it closes with;
3. it never emits ``MessageEnd`` for content that holds a bare CR or LF
   (RFC 5321 2.3.8: SMTP smuggling);
4. for well-formed input, the message data it hands on is exactly the content
   that RFC 5321 4.5.2 defines (dot-unstuffed for DATA, verbatim for BDAT), and
   the replies and events do not depend on where the input was cut.

The strategies are in ``tests/strategies.py``; the driver is the transcript
tests' ``Session``.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pillarbox.protocols.smtp import events as ev
from pillarbox.protocols.smtp.server import Limits
from tests.protocols.test_smtp_server import (
    DATA,
    EHLO,
    EHLO_REPLY,
    GREETING,
    MAIL,
    NOOP,
    QUIT,
    R_354,
    R_BARE_DATA,
    R_BDAT_SYNTAX,
    R_BYE,
    R_MAIL,
    R_OK,
    R_QUEUED,
    R_RCPT,
    RCPT,
    Session,
)
from tests.strategies import (
    any_bytes,
    bdat_transfers,
    data_bodies,
    pieces,
    sessions,
    text_lines,
    well_formed_messages,
)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)")

LIMITS = st.builds(
    Limits,
    max_message_size=st.sampled_from([0, 40, 300, 52428800]),
    max_recipients=st.sampled_from([0, 1, 2, 1000]),
    max_command_line=st.sampled_from([0, 24, 80, 2048]),
    max_text_line=st.sampled_from([0, 12, 1000]),
    max_errors=st.sampled_from([0, 1, 3, 20]),
    max_received_headers=st.sampled_from([0, 1, 50]),
)

PREFIXES = [b"", EHLO, EHLO + MAIL, EHLO + MAIL + RCPT, EHLO + MAIL + RCPT + DATA,
            b"HELO client.test\r\n" + MAIL + RCPT]

# Content limits out of the way: the only content error left is a bare CR or
# LF, so which error a message gets cannot depend on how the input is cut.
NO_CONTENT_LIMITS = Limits(max_text_line=0, max_received_headers=1_000_000)


def has_bare_line_ending(content: bytes) -> bool:
    return b"\r" in content.replace(b"\r\n", b"") or b"\n" in content.replace(b"\r\n", b"")


def reply_codes(out: bytes) -> list[int]:
    """Check that ``out`` is a run of well-formed replies; return their codes."""
    assert not out or out.endswith(b"\r\n"), out[-80:]
    codes: list[int] = []
    open_code: int | None = None
    for line in out.split(b"\r\n")[:-1]:
        m = REPLY_LINE.fullmatch(line)
        assert m is not None, line
        code = int(m[1])
        assert open_code is None or code == open_code, line
        if m[2] == b"-":
            open_code = code
        else:
            open_code = None
            codes.append(code)
    assert open_code is None, "multi-line reply without its last line"
    return codes


def check_invariants(session: Session, out: bytes) -> None:
    codes = reply_codes(out)
    for content in session.messages:
        assert not has_bare_line_ending(content), content
    kinds = session.kinds
    if "Closing" in kinds:
        assert kinds.index("Closing") == len(kinds) - 1
        assert session.conn.closed
    if session.conn.closed:
        assert codes and codes[-1] in (221, 421)


def without_data(session: Session) -> list[ev.Event]:
    return [e for e in session.events if not isinstance(e, ev.MessageData)]


def run(
    stream_pieces: list[bytes], limits: Limits = Limits(), **kwargs: object
) -> tuple[Session, bytes]:
    session = Session(limits, **kwargs)  # type: ignore[arg-type]
    out = session.feed(*stream_pieces)
    check_invariants(session, out)
    return session, out


# ------------------------------------------------- no exception, well-formed


@FUZZ
@given(
    prefix=st.sampled_from(PREFIXES),
    stream=any_bytes(),
    limits=LIMITS,
    tls=st.booleans(),
    data=st.data(),
)
def test_arbitrary_bytes(
    prefix: bytes, stream: bytes, limits: Limits, tls: bool, data: st.DataObject
) -> None:
    stream = prefix + stream
    run(data.draw(pieces(stream)), limits, tls_available=tls)


@FUZZ
@given(stream=sessions(), limits=LIMITS, tls=st.booleans(), data=st.data())
def test_plausible_sessions(stream: bytes, limits: Limits, tls: bool, data: st.DataObject) -> None:
    run(data.draw(pieces(stream)), limits, tls_available=tls)


@FUZZ
@given(stream=sessions(), data=st.data())
def test_replies_and_events_do_not_depend_on_the_cuts(stream: bytes, data: st.DataObject) -> None:
    whole, whole_out = run([stream], NO_CONTENT_LIMITS)
    cut, cut_out = run(data.draw(pieces(stream)), NO_CONTENT_LIMITS)
    assert cut_out == whole_out
    # Content handed on before a refusal may differ (it is dropped anyway); the
    # content of every message that reached MessageEnd may not.
    assert cut.messages == whole.messages
    assert without_data(cut) == without_data(whole)


@FEW
@given(size=st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3))
@example(size="²")
def test_bdat_size_of_any_digits_raises_nothing(size: str) -> None:
    # str.isdigit() is true for "²", which int() refuses: once a ValueError.
    stream = EHLO + MAIL + RCPT + f"BDAT {size}\r\n".encode() + NOOP
    session, out = run([stream])
    if not size.isascii():
        assert out.endswith(R_BDAT_SYNTAX + R_OK)


# --------------------------------------------------------- message content


@FUZZ
@given(message=well_formed_messages(), data=st.data())
def test_well_formed_data_is_delivered_unstuffed(
    message: tuple[bytes, bytes], data: st.DataObject
) -> None:
    wire, content = message
    stream = EHLO + MAIL + RCPT + DATA + wire + QUIT
    session, out = run(data.draw(pieces(stream)))
    assert out == GREETING + EHLO_REPLY + R_MAIL + R_RCPT + R_354 + R_QUEUED + R_BYE
    assert session.messages == [content]
    assert session.events[-2] == ev.MessageEnd(len(content))


# Around the 64 KiB pieces in which the core hands on a line without CRLF.
LINE_LENGTHS = st.one_of(
    st.integers(0, 100),
    st.integers(65_530, 65_540),
    st.sampled_from([131_071, 131_072, 131_073]),
    st.integers(0, 200_000),
)


@FEW
@given(
    lines=st.lists(
        st.tuples(st.sampled_from([b"", b".", b".."]), LINE_LENGTHS), min_size=1, max_size=3
    ),
    data=st.data(),
)
def test_long_lines_are_delivered_unstuffed(
    lines: list[tuple[bytes, int]], data: st.DataObject
) -> None:
    # Lines longer than the 64 KiB pieces the core hands on (max_text_line=0).
    text = [head + b"y" * n for head, n in lines]
    content = b"".join(line + b"\r\n" for line in text)
    wire = b"".join((b"." if line[:1] == b"." else b"") + line + b"\r\n" for line in text)
    stream = EHLO + MAIL + RCPT + DATA + wire + b".\r\n" + NOOP
    session, out = run(data.draw(pieces(stream, max_cuts=8)), Limits(max_text_line=0))
    assert out.endswith(R_354 + R_QUEUED + R_OK)
    assert session.messages == [content]


@FUZZ
@given(
    lines=st.lists(text_lines(), min_size=1, max_size=20),
    where=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    bare=st.sampled_from([b"\r", b"\n"]),
    data=st.data(),
)
def test_bare_cr_or_lf_in_data_is_refused(
    lines: list[bytes], where: tuple[int, int], bare: bytes, data: st.DataObject
) -> None:
    index = where[0] % len(lines)
    pos = where[1] % (len(lines[index]) + 1)
    lines[index] = lines[index][:pos] + bare + lines[index][pos:]
    wire = b"".join((b"." if line[:1] == b"." else b"") + line + b"\r\n" for line in lines)
    stream = EHLO + MAIL + RCPT + DATA + wire + b".\r\n" + NOOP
    session, out = run(data.draw(pieces(stream)), NO_CONTENT_LIMITS)
    assert out.endswith(R_354 + R_BARE_DATA + R_OK)
    assert session.messages == []
    assert session.kinds[-1] == "MessageAborted"


@FUZZ
@given(body=data_bodies(), data=st.data())
def test_data_ends_only_at_crlf_dot_crlf(body: bytes, data: st.DataObject) -> None:
    stream = EHLO + MAIL + RCPT + DATA + body
    session, out = run(data.draw(pieces(stream)), NO_CONTENT_LIMITS)
    ended = bool(session.of(ev.MessageEnd) or session.of(ev.MessageAborted))
    # Where the content ends by RFC 5321 4.1.1.4: the first CRLF "." CRLF,
    # counting the CRLF that ended the DATA command.
    assert ended == ((b"\r\n" + body).find(b"\r\n.\r\n") >= 0)


@FUZZ
@given(
    content=st.one_of(
        data_bodies(), st.binary(max_size=300), well_formed_messages().map(lambda m: m[1])
    ),
    data=st.data(),
)
def test_bdat_content_is_delivered_verbatim(content: bytes, data: st.DataObject) -> None:
    transfer = data.draw(bdat_transfers(content))
    stream = EHLO + MAIL + RCPT + transfer + NOOP
    session, out = run(data.draw(pieces(stream)), NO_CONTENT_LIMITS)
    if has_bare_line_ending(content):
        assert R_BARE_DATA in out
        assert session.messages == []
        assert "MessageAborted" in session.kinds
    else:
        assert out.endswith(R_QUEUED + R_OK)
        assert session.messages == [content]
        chunks = transfer.count(b"BDAT ") - 1
        assert out.count(b" octets received\r\n") == chunks
