"""Property tests of the POP3 server core (``pillarbox.protocols.pop3.server``).

The invariant, after h11's: whatever bytes arrive, cut into whatever pieces,

1. the core raises nothing: every client error is answered with a reply, and
   any exception escaping ``receive_data``/``next_event``/``respond`` is a bug;
2. what it sends is a run of well-formed responses: each starts with
   ``+OK``, ``-ERR`` or a ``+ `` challenge, every line ends in CRLF, a
   multi-line response ends with ``.``, and nothing follows the reply it
   closes with;
3. the responses and events do not depend on where the input was cut;
4. the byte-stuffing of a message is undone exactly by a client's
   unstuffing (RFC 1939 3), whatever the pieces it is encoded in.

The driver is the transcript tests' ``Session``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pillarbox.protocols.pop3 import events as ev
from pillarbox.protocols.pop3.message import DotStuffer
from pillarbox.protocols.pop3.server import Limits
from tests.protocols.test_pop3_server import Session
from tests.strategies import any_bytes, pieces

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COMMANDS = [
    b"USER alice", b"PASS secret", b"PASS wrong", b"USER", b"PASS", b"CAPA", b"STLS",
    b"AUTH", b"AUTH PLAIN", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH LOGIN", b"AUTH X",
    b"AUTH SCRAM-SHA-256 bW9yZQ==", b"bW9yZQ==", b"*", b"", b"=", b"APOP a b",
    b"STAT", b"LIST", b"LIST 1", b"LIST 3", b"UIDL", b"UIDL 2", b"RETR 1", b"RETR 2",
    b"RETR 0", b"TOP 1 0", b"TOP 2 2", b"TOP 2", b"DELE 1", b"DELE x", b"RSET", b"NOOP",
    b"QUIT", b"XYZ", b"retr 1", b"LIST 99999999999",
]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]

LIMITS = st.builds(
    Limits,
    max_command_line=st.sampled_from([0, 16, 1024]),
    max_auth_line=st.sampled_from([0, 16, 16384]),
    max_errors=st.sampled_from([0, 1, 3, 20]),
)


LOGIN = b"USER alice\r\nPASS secret\r\n"


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = [draw(st.sampled_from([b"", LOGIN, b"AUTH PLAIN\r\n"]))]
    for _ in range(draw(st.integers(0, 14))):
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(any_bytes()))
        else:
            parts.append(draw(st.sampled_from(COMMANDS)) + draw(st.sampled_from(ENDINGS)))
    return b"".join(parts)


STATUS = (b"+OK", b"-ERR", b"+ ")


def check_wire(out: bytes, closed: bool) -> None:
    """Invariant 2 (the scripted maildrop has no line that looks like a status)."""
    assert not out or out.endswith(b"\r\n"), out[-80:]
    lines = out.split(b"\r\n")[:-1]
    i = 0
    last = b""
    while i < len(lines):
        line = lines[i]
        assert line.startswith(STATUS), (line, out)
        assert b"\r" not in line and b"\n" not in line
        last = line
        i += 1
        if line.startswith(b"+OK") and i < len(lines) and not lines[i].startswith(STATUS):
            while lines[i] != b".":   # a multi-line body, up to its end
                i += 1
                assert i < len(lines), ("multi-line response without its end", out)
            i += 1
    if closed and lines:
        assert last.startswith((b"+OK", b"-ERR")), last


def run(stream_pieces: list[bytes], limits: Limits, tls: bool, plaintext: bool,
        max_body: int | None) -> tuple[Session, bytes]:
    session = Session(tls_available=tls, plaintext=plaintext, limits=limits)
    out = b"".join(session.send(piece, max_body) for piece in stream_pieces)
    check_wire(out, session.core.closed)
    kinds = [type(e) for e in session.events]
    if ev.Closing in kinds:
        assert kinds.index(ev.Closing) == len(kinds) - 1
        assert session.core.closed
    return session, out


@FUZZ
@given(stream=streams(), limits=LIMITS, tls=st.booleans(), plaintext=st.booleans(),
       data=st.data(), max_body=st.sampled_from([None, 1, 7, 65536]))
@example(stream=b"USER alice\r\nPASS secret\r\nRETR 1\r\nTOP 2 1\r\nQUIT\r\n",
         limits=Limits(), tls=True, plaintext=True, data=None, max_body=1)
def test_arbitrary_sessions(stream: bytes, limits: Limits, tls: bool, plaintext: bool,
                            data: st.DataObject | None, max_body: int | None) -> None:
    whole, out = run([stream], limits, tls, plaintext, max_body)
    cut = data.draw(pieces(stream)) if data is not None else [stream[:5], stream[5:]]
    split, split_out = run(cut, limits, tls, plaintext, max_body)
    assert split_out == out
    assert split.events == whole.events


@FUZZ
@given(stream=any_bytes(200), data=st.data())
def test_arbitrary_bytes_after_login(stream: bytes, data: st.DataObject) -> None:
    session = Session()
    session.login()
    out = b"".join(session.send(piece) for piece in data.draw(pieces(stream)))
    check_wire(out, session.core.closed)


def unstuff(wire: bytes) -> bytes:
    """What a client does with a multi-line response body (RFC 1939 3)."""
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def normalized(content: bytes) -> bytes:
    """``content`` with every bare LF a CRLF and a final CRLF, as it is sent."""
    out = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out if out.endswith(b"\r\n") else out + b"\r\n"


@FUZZ
@given(content=st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b".."]),
                        max_size=30).map(b"".join) | any_bytes(100),
       data=st.data())
def test_stuffing_round_trip(content: bytes, data: st.DataObject) -> None:
    stuffer = DotStuffer()
    wire = b"".join(stuffer.feed(p) for p in data.draw(pieces(content))) + stuffer.end()
    assert stuffer.octets == len(content)
    body = wire[:-3]
    # No line of the body is the terminator, and no bare LF is sent.
    assert b"\r\n.\r\n" not in b"\r\n" + body
    assert body.count(b"\n") == body.count(b"\r\n")
    if content:
        assert unstuff(wire) == normalized(content)
