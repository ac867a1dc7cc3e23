"""Property tests of the IMAP server core (``pillarbox.protocols.imap.server``).

The invariant, after h11's: whatever bytes arrive, cut into whatever pieces,
and answered by a trivial session that says OK to everything,

1. the core raises nothing: every client error becomes a ``BadCommand`` (or
   a BYE), and any exception escaping ``receive_data``/``next_event``/``send``
   is a bug;
2. everything it sends is well-formed: each line is an untagged ``* ...``, a
   continuation ``+ ...`` or a tagged ``tag OK|NO|BAD ...``, ending in CRLF,
   and after ``* BYE`` at most the tagged completion of LOGOUT follows;
3. the events and the bytes sent do not depend on where the input was cut
   (STARTTLS is refused in that test: what it drops depends on timing by
   design);
4. a literal's octets are never taken as commands: the data of an APPEND is
   exactly what the client put in the literal.

The IMAP strategies live here (``imap_streams``); ``pieces`` and ``mutate``
come from ``tests/strategies.py``.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap.server import Limits
from tests.protocols.test_imap_server import Session
from tests.strategies import mutate, pieces

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LINE = re.compile(rb"(\* |\+ |[^\s(){%*\"\\+]+ (OK|NO|BAD)( |\r))[^\r\n]*")

LIMITS = st.builds(
    Limits,
    max_line=st.sampled_from([8, 30, 100, 65536]),
    max_literal=st.sampled_from([1, 10, 65536]),
    appendlimit=st.sampled_from([1, 20, 52428800]),
    max_command=st.sampled_from([30, 200, 104857600]),
    max_errors=st.sampled_from([0, 1, 3, 10]),
)

# ------------------------------------------------------------------ strategies

IMAP_FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b" ", b"(", b")", b"[", b"]", b"<", b">", b'"', b"\\", b"{", b"}",
    b"{0}\r\n", b"{3}\r\n", b"{3+}\r\n", b"~{3}\r\n", b"{4097+}\r\n", b"{99999999999+}\r\n",
    b"*", b"%", b"$", b"&", b"&-", b"&AOk-", b"\x00", b"\xff", b"\xc3\xa9", b"NIL", b"DONE\r\n",
    b"a1 ", b"a1 LOGIN bob pw\r\n", b"a2 SELECT INBOX\r\n", b"a3 IDLE\r\n", b"*\r\n",
    b"a4 AUTHENTICATE PLAIN\r\n", b"AGJvYgBwdw==\r\n", b"a5 STARTTLS\r\n", b"a6 LOGOUT\r\n",
    b"a7 ENABLE UTF8=ACCEPT\r\n", b"a8 COMPRESS DEFLATE\r\n", b"a9 APPEND INBOX {3+}\r\nabc\r\n",
    b"UID ", b"FETCH ", b"1:*", b"BODY.PEEK[HEADER.FIELDS (From)]<0.5>", b"SEARCH ",
]

COMMANDS = [
    "CAPABILITY", "NOOP", "LOGOUT", "ID NIL", 'ID ("name" "x")', "LOGIN bob pw",
    "LOGIN bob {2+}\r\npw", "AUTHENTICATE PLAIN", "AUTHENTICATE PLAIN AGJvYgBwdw==",
    "AUTHENTICATE PLAIN =", "ENABLE IMAP4rev2", "ENABLE UTF8=ACCEPT CONDSTORE", "SELECT INBOX",
    "EXAMINE inbox (CONDSTORE)", "SELECT x (QRESYNC (1 2 1:5 (1:2 3:4)))",
    "CREATE Sent (USE (\\Sent))", "CREATE Entw&APw-rfe", "CREATE Entwürfe", "DELETE x",
    "RENAME a b", "SUBSCRIBE x", "UNSUBSCRIBE x", 'LIST "" *',
    'LIST (SUBSCRIBED) "" (% *) RETURN (CHILDREN STATUS (MESSAGES))', 'LSUB "" %', "NAMESPACE",
    "STATUS INBOX (MESSAGES UIDNEXT)", "APPEND INBOX {3+}\r\nabc",
    'APPEND INBOX (\\Seen) " 7-Feb-1994 21:52:25 -0800" ~{3+}\r\na\x00b {1+}\r\nx',
    "APPEND INBOX {3}\r\nabc", "IDLE", "CLOSE", "UNSELECT", "EXPUNGE", "UID EXPUNGE 1:3",
    "SEARCH RETURN (MIN SAVE) CHARSET UTF-8 OR SEEN (FROM {3+}\r\nbob) UID $",
    'SEARCH MODSEQ "/flags/\\\\Seen" all 5', "FETCH 1:* (FLAGS UID) (CHANGEDSINCE 5)",
    "UID FETCH 1 (BODY[1.2.HEADER.FIELDS (From To)]<0.10>) (CHANGEDSINCE 2 VANISHED)",
    "FETCH 1 FULL", "STORE 1 +FLAGS.SILENT (\\Seen)", "UID STORE 1 (UNCHANGEDSINCE 3) FLAGS x",
    "COPY 1 x", "UID MOVE 1:* Trash", "SORT (REVERSE DATE) UTF-8 ALL",
    "THREAD REFERENCES UTF-8 ALL", 'GETQUOTA ""', "GETQUOTAROOT INBOX",
    'SETQUOTA "" (STORAGE 10)', "COMPRESS DEFLATE", "STARTTLS", "CHECK", "FROB",
]

LINE_ENDINGS = [b"\r\n"] * 10 + [b"\n", b"\r", b""]


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    tag = draw(st.sampled_from(["a", "a", "a", "A1", "x.y", "*", "+", ""]))
    line = f"{tag} {draw(st.sampled_from(COMMANDS))}".encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 4)) == 0:
        line = draw(mutate(line))
    return line + draw(st.sampled_from(LINE_ENDINGS))


def any_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.lists(st.one_of(st.sampled_from(IMAP_FRAGMENTS), st.binary(max_size=10)),
                 max_size=50).map(b"".join),
    )


@st.composite
def imap_streams(draw: st.DrawFn) -> bytes:
    """A client's output: usually a LOGIN first, then commands and junk."""
    steps = [b"a0 LOGIN bob pw\r\n"] if draw(st.integers(0, 5)) else []
    if draw(st.booleans()):
        steps.append(b"a00 SELECT INBOX\r\n")
    steps += draw(st.lists(st.one_of(command_lines(), command_lines(), any_bytes()),
                           max_size=12))
    return b"".join(steps)


# ------------------------------------------------------------------ checks


def check_output(out: bytes) -> None:
    assert not out or out.endswith(b"\r\n"), out[-80:]
    lines = out.split(b"\r\n")[:-1]
    bye = None
    for i, line in enumerate(lines):
        assert LINE.match(line + b"\r"), line
        if line.startswith(b"* BYE") and bye is None:
            bye = i
    if bye is not None:
        after = lines[bye + 1 :]
        assert len(after) <= 1, after
        assert all(not x.startswith((b"*", b"+")) for x in after), after


def run(stream: list[bytes], limits: Limits = Limits(), tls: bool = True) -> tuple[Session, bytes]:
    session = Session(limits, tls=tls)
    out = session.feed(*stream)
    check_output(out)
    return session, out


# ------------------------------------------------------------------ properties


@FUZZ
@given(stream=any_bytes(), limits=LIMITS, data=st.data())
def test_arbitrary_bytes_raise_nothing(stream: bytes, limits: Limits, data: st.DataObject) -> None:
    prefix = data.draw(st.sampled_from([b"", b"a LOGIN bob pw\r\n",
                                        b"a LOGIN bob pw\r\nb SELECT INBOX\r\n"]))
    run(data.draw(pieces(prefix + stream)), limits)


@FUZZ
@given(stream=imap_streams(), limits=LIMITS, data=st.data())
def test_plausible_sessions_raise_nothing(stream: bytes, limits: Limits,
                                          data: st.DataObject) -> None:
    run(data.draw(pieces(stream)), limits)


@FUZZ
@given(stream=imap_streams(), limits=LIMITS, data=st.data())
def test_events_and_output_do_not_depend_on_the_cuts(
    stream: bytes, limits: Limits, data: st.DataObject
) -> None:
    whole, whole_out = run([stream], limits, tls=False)
    cut, cut_out = run(data.draw(pieces(stream)), limits, tls=False)
    assert cut_out == whole_out
    assert cut.events == whole.events


@FUZZ
@given(
    messages=st.lists(st.binary(max_size=200), min_size=1, max_size=4),
    sync=st.lists(st.sampled_from(["", "+"]), min_size=4, max_size=4),
    data=st.data(),
)
def test_append_data_is_exactly_the_literals(
    messages: list[bytes], sync: list[str], data: st.DataObject
) -> None:
    wire = b"a LOGIN bob pw\r\nb APPEND INBOX"
    for i, m in enumerate(messages):
        marker = b"~{%d%s}" % (len(m), sync[i].encode()) if b"\x00" in m else \
            b"{%d%s}" % (len(m), sync[i].encode())
        wire += b" " + marker + b"\r\n" + m
    wire += b"\r\nc NOOP\r\n"
    session, out = run(data.draw(pieces(wire)))
    appends = [e for e in session.events if isinstance(e, c.Append)]
    assert len(appends) == 1
    assert [m.data for m in appends[0].messages] == messages
    assert out.endswith(b"c OK Noop done\r\n")


@FUZZ
@given(
    line=st.one_of(command_lines(), st.builds(lambda a, b: a + b, command_lines(), any_bytes())),
    utf8=st.booleans(),
)
def test_parser_raises_only_parse_error(line: bytes, utf8: bool) -> None:
    from pillarbox.protocols.imap.parser import ParseError, parse_command, parse_head

    data = line.removesuffix(b"\r\n")
    try:
        command = parse_command(data, utf8=utf8)
    except ParseError as exc:
        assert exc.text and exc.status in ("BAD", "NO")
    else:
        assert isinstance(command, c.Command)
        assert parse_head(data.split(b"\r\n", 1)[0])[0] == command.tag
