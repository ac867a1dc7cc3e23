"""mbox reading and writing (``pillarbox.admin.mbox``), without the store."""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pillarbox.admin.mbox import (
    MboxError,
    MboxWriter,
    from_line,
    from_line_date,
    read_mbox,
    split_flags,
)

T = 1606854770          # Tue Dec  1 20:32:50 2020 UTC


class Warnings(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


def read(data: bytes, warn: Warnings | None = None) -> list:
    return list(read_mbox(io.BytesIO(data), "test.mbox", Warnings() if warn is None else warn))


def write(messages: list[tuple[bytes, set[str], float]]) -> bytes:
    out = io.BytesIO()
    writer = MboxWriter(out)
    for data, flags, date in messages:
        writer.add(data, flags, date)
    return out.getvalue()


# ------------------------------------------------------------------ From lines


@pytest.mark.parametrize(("line", "expected"), [
    (b"From alice@example.test Tue Dec  1 20:32:50 2020\n", T),
    (b"From - Tue Dec  1 20:32:50 2020\n", T),                       # Thunderbird
    (b"From MAILER-DAEMON Tue Dec 1 20:32 2020\n", T - 50),          # no seconds
    (b"From a@b Tue Dec  1 21:32:50 2020 +0100\n", T),               # explicit zone
    (b"From a@b Tue Dec  1 21:32:50 +0100 2020\n", T),
    (b"From a@b no date here\n", None),
    (b"From a@b Tue Feb 31 20:32:50 2020\n", None),                 # no such day
])
def test_from_line_dates(line: bytes, expected: float | None):
    got = from_line_date(line)
    assert got == expected


def test_from_line_is_asctime_in_utc():
    assert from_line("a@b", T) == b"From a@b Tue Dec  1 20:32:50 2020\n"
    assert from_line("", T).startswith(b"From MAILER-DAEMON ")


# ------------------------------------------------------------------ reading


def test_messages_and_mboxrd_unquoting():
    data = (
        b"From alice@example.test Tue Dec  1 20:32:50 2020\n"
        b"Subject: one\n\nbody\n>From the start\n>>From quoted twice\n> From not quoted\n\n"
        b"From bob@example.test Tue Dec  1 20:32:51 2020\n"
        b"Subject: two\n\nlast line, no blank after\n"
    )
    one, two = read(data)
    assert one.data == (b"Subject: one\r\n\r\nbody\r\nFrom the start\r\n>From quoted twice\r\n"
                        b"> From not quoted\r\n")
    assert one.internal_date == T and one.line == 1
    assert two.data == b"Subject: two\r\n\r\nlast line, no blank after\r\n"
    assert two.internal_date == T + 1 and two.line == 9


def test_an_unquoted_from_in_a_body_stays_text():
    # mboxo writers that forgot to quote: a From line not after a blank line
    # and without a date is text, not a new message.
    data = (b"From a@b Tue Dec  1 20:32:50 2020\nSubject: x\n\nI said\nFrom me to you\n\n")
    [m] = read(data)
    assert m.data == b"Subject: x\r\n\r\nI said\r\nFrom me to you\r\n"


def test_status_fields_become_flags_and_leave_the_message():
    data = (
        b"From a@b Tue Dec  1 20:32:50 2020\n"
        b"Subject: x\nStatus: RO\nX-Status: AFTD\nX-Keywords: $Label1, work\n"
        b"X-UID: 17\nX-IMAPbase: 1 2\n\nbody\n\n"
        b"From a@b Tue Dec  1 20:32:50 2020\n"
        b"Subject: y\nStatus: O\n\nunread\n"
    )
    first, second = read(data)
    assert first.flags == {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted",
                           "$Label1", "work"}
    assert first.data == b"Subject: x\r\n\r\nbody\r\n"
    assert second.flags == set()
    assert second.data == b"Subject: y\r\n\r\nunread\r\n"


def test_thunderbird_fields():
    data = (
        b"From - Tue Dec  1 20:32:50 2020\n"
        b"X-Mozilla-Status: 1003\nX-Mozilla-Status2: 00000000\n"
        b"X-Mozilla-Keys: $label1 later                      \n"
        b"Status: O\nSubject: x\n\nbody\n"
    )
    [m] = read(data)
    # 0x1 read, 0x2 replied, 0x1000 forwarded; it wins over Status: O
    assert m.flags == {"\\Seen", "\\Answered", "$Forwarded", "$label1", "later"}
    assert m.data == b"Subject: x\r\n\r\nbody\r\n"


def test_state_fields_in_the_body_stay():
    message, flags = split_flags(b"Subject: x\n\nStatus: RO\n")
    assert message == b"Subject: x\n\nStatus: RO\n" and flags == set()


def test_folded_state_field():
    message, flags = split_flags(b"X-Keywords: one\n two\nSubject: x\n\nb\n")
    assert message == b"Subject: x\n\nb\n" and flags == {"one", "two"}


def test_date_from_the_date_field_then_now():
    warn = Warnings()
    data = (b"From a@b sometime\nDate: Tue, 1 Dec 2020 21:32:50 +0100\n\nx\n\n"
            b"From a@b sometime\nSubject: no date\n\ny\n")
    before = time.time()
    first, second = read(data, warn)
    assert first.internal_date == T
    assert before - 1 <= second.internal_date <= time.time()
    assert warn == ["test.mbox:6: no date in the From line nor a Date: field; dated now"]


def test_crlf_mbox():
    data = b"From a@b Tue Dec  1 20:32:50 2020\r\nStatus: RO\r\nSubject: x\r\n\r\n>From y\r\n\r\n"
    [m] = read(data)
    assert m.data == b"Subject: x\r\n\r\nFrom y\r\n" and m.flags == {"\\Seen"}


def test_leading_blank_lines_and_empty_file():
    assert read(b"") == []
    assert [m.data for m in read(b"\n\nFrom a@b Tue Dec  1 20:32:50 2020\nS: x\n\nb\n")] == [
        b"S: x\r\n\r\nb\r\n"]


def test_empty_message_warns():
    warn = Warnings()
    [m] = read(b"From a@b Tue Dec  1 20:32:50 2020\n\n", warn)
    assert m.data == b"" and warn == ["test.mbox:1: an empty message"]


@pytest.mark.parametrize("data", [
    b"Subject: not an mbox\n\nbody\n",
    b"\nReturn-Path: <a@b>\n",
    b"\x00\x01binary",
])
def test_not_an_mbox(data: bytes):
    with pytest.raises(MboxError, match="not an mbox file"):
        read(data)


# ------------------------------------------------------------------ writing


def test_writer_quotes_and_writes_the_state():
    out = write([
        (b"Return-Path: <alice@example.test>\r\nSubject: x\r\n\r\nFrom here\r\n>From there\r\n",
         {"\\Seen", "\\Answered", "work"}, T),
        (b"Subject: y\r\n\r\nno newline at the end", set(), T + 1),
    ])
    assert out == (
        b"From alice@example.test Tue Dec  1 20:32:50 2020\n"
        b"Return-Path: <alice@example.test>\nSubject: x\n"
        b"Status: RO\nX-Status: A\nX-Keywords: work\n"
        b"\n>From here\n>>From there\n\n"
        b"From MAILER-DAEMON Tue Dec  1 20:32:51 2020\n"
        b"Subject: y\nStatus: O\n\nno newline at the end\n\n"
    )


def test_an_mbox_written_by_us_reads_back_byte_for_byte():
    original = (
        b"From alice@example.test Tue Dec  1 20:32:50 2020\n"
        b"Return-Path: <alice@example.test>\nSubject: x\n"
        b"Status: RO\nX-Status: AF\nX-Keywords: $Label1 work\n"
        b"\n>From here\n>>From there\n\n"
        b"From MAILER-DAEMON Tue Dec  1 20:32:51 2020\n"
        b"Subject: y\nStatus: O\n\nbody\n\n"
    )
    again = write([(m.data, m.flags, m.internal_date) for m in read(original)])
    assert again == original


lines = st.lists(
    st.one_of(
        st.sampled_from([b"From x", b">From x", b">>From  x", b"From", b"", b">", b" From x"]),
        st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    ),
    max_size=12,
)


@given(st.lists(st.tuples(lines, st.sets(st.sampled_from(
    ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded", "kw"]))),
    min_size=1, max_size=4))
def test_round_trip_property(messages):
    """Invariant: whatever the bodies hold, write then read gives back every
    message's octets and flags (the quoting is reversible)."""
    given_messages = [
        (b"Subject: s\r\n\r\n" + b"".join(line + b"\r\n" for line in body), flags, T + i)
        for i, (body, flags) in enumerate(messages)
    ]
    back = read(write(given_messages))
    assert [(m.data, m.flags, m.internal_date) for m in back] == given_messages


@given(st.binary(max_size=400), st.booleans())
def test_any_input_reads_or_is_refused(data: bytes, as_mbox: bool):
    """Invariant: any input gives messages or MboxError, never another exception."""
    if as_mbox:
        data = b"From a@b Tue Dec  1 20:32:50 2020\n" + data
    try:
        for m in read(data):
            assert isinstance(m.data, bytes)
    except MboxError:
        assert not as_mbox
