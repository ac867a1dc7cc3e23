"""SEARCH evaluation (pillarbox.access.search)."""

from __future__ import annotations

import base64
from datetime import date

import pytest

from pillarbox.access.cache import CacheEntry, compute
from pillarbox.access.search import BadCharset, SearchError, search, search_charset
from pillarbox.protocols.imap.commands import SearchKey as K
from pillarbox.protocols.imap.commands import SequenceSet
from pillarbox.store.base import MessageMeta

DAY = 86400.0
T0 = date(2024, 3, 10).toordinal() - date(1970, 1, 1).toordinal()  # days since the epoch


def message(*lines: str | bytes) -> bytes:
    return b"\r\n".join(x if isinstance(x, bytes) else x.encode() for x in lines)


MESSAGES: dict[int, bytes] = {
    1: message("From: Alice <alice@example.com>", "To: bob@example.org",
               "Subject: Meeting tomorrow", "Date: Sun, 10 Mar 2024 23:30:00 -0500",
               "", "Let us meet at noon.", ""),
    2: message("From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>", "To: alice@example.com",
               "Cc: Carol <carol@example.net>", "Subject: =?iso-8859-1?q?Gr=FC=DFe?=",
               "Date: Mon, 11 Mar 2024 08:00:00 +0100", "MIME-Version: 1.0",
               "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit",
               "", "Viele Grüße aus KÖLN", ""),
    3: message("From: bob@example.org", "To: alice@example.com", "Subject: Latin-1 body",
               "Content-Type: text/plain; charset=iso-8859-1",
               "Content-Transfer-Encoding: quoted-printable", "",
               "Caf=E9 cr=E8me, tr=E8s bien", ""),
    4: message("From: news@example.com", "Subject: Newsletter", "Bcc: secret@example.com",
               "X-Mailer: Frobnicator 2.0", "MIME-Version: 1.0",
               'Content-Type: multipart/alternative; boundary="b"', "", "--b",
               "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", "",
               base64.b64encode("Ünïcödé plain part".encode()).decode(), "--b",
               "Content-Type: text/html; charset=utf-8", "",
               "<html><head><style>p {color: red}</style></head>"
               "<body><p>Click &amp; <b>win</b> a prize</p></body></html>", "--b--", ""),
    5: message("Subject: no date and no from", "", "plain words", ""),
    6: b"\x00garbage\xff without any header\r\n",
}

# (flags, internal date as day offset from 2024-03-10 + seconds, size, savedate)
META = {
    1: ({"\\Seen"}, 0.5, 500, None),
    2: ({"\\Seen", "\\Flagged", "$Important"}, 1.2, 1500, 1.0),
    3: (set(), 2.0, 50, 3.0),
    4: ({"\\Deleted", "\\Answered"}, 3.9, 20000, None),
    5: ({"\\Draft"}, -1.0, 10, None),
    6: ({"\\Seen", "\\Deleted"}, 5.0, 3, 5.5),
}

NOW = (T0 + 6.0) * DAY


def metas() -> list[tuple[int, MessageMeta]]:
    out = []
    for n, (flags, day, size, saved) in META.items():
        out.append((n, MessageMeta(uid=n * 10, flags=frozenset(flags), modseq=n * 100,
                                   internal_date=(T0 + day) * DAY, size=size, blob=f"b{n}",
                                   savedate=None if saved is None else (T0 + saved) * DAY)))
    return out


class Loads:
    def __init__(self) -> None:
        self.content: list[int] = []

    def __call__(self, m: MessageMeta) -> bytes:
        self.content.append(m.uid)
        return MESSAGES[m.uid // 10]


def run(key: K, *, saved: list[int] | None = None, charset: str | None = None,
        uid: bool = False, cache: dict[str, CacheEntry] | None = None,
        loads: Loads | None = None, recent: frozenset[int] = frozenset()) -> list[int]:
    ms = metas()
    return search(key, ms, largest_seq=len(ms), largest_uid=ms[-1][1].uid,
                  content=loads or Loads(), cache=lambda m: (cache or {}).get(m.blob),
                  saved=saved, now=NOW, charset=charset, uid=uid, recent=recent)


def d(offset: int) -> date:
    return date.fromordinal(date(2024, 3, 10).toordinal() + offset)


# --- flags, numbers, sizes: never the content -------------------------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    (K("ALL"), [1, 2, 3, 4, 5, 6]),
    (K("SEEN"), [1, 2, 6]), (K("UNSEEN"), [3, 4, 5]),
    (K("FLAGGED"), [2]), (K("UNFLAGGED"), [1, 3, 4, 5, 6]),
    (K("DELETED"), [4, 6]), (K("UNDELETED"), [1, 2, 3, 5]),
    (K("ANSWERED"), [4]), (K("UNANSWERED"), [1, 2, 3, 5, 6]),
    (K("DRAFT"), [5]), (K("UNDRAFT"), [1, 2, 3, 4, 6]),
    (K("KEYWORD", ("$important",)), [2]), (K("UNKEYWORD", ("$Important",)), [1, 3, 4, 5, 6]),
    (K("KEYWORD", ("$Missing",)), []),
    (K("LARGER", (500,)), [2, 4]), (K("SMALLER", (500,)), [3, 5, 6]),
    (K("MODSEQ", (300, None, None)), [3, 4, 5, 6]),
    (K("MODSEQ", (200, "/flags/\\Seen", "all")), [2, 3, 4, 5, 6]),
    (K("SEQSET", (SequenceSet(((2, 3), (5, None))),)), [2, 3, 5, 6]),
    (K("SEQSET", (SequenceSet(((None, 5),)),)), [5, 6]),      # *:5 is 5:6
    (K("UID", (SequenceSet(((20, 40),)),)), [2, 3, 4]),
    (K("UID", (SequenceSet(((None, None),)),)), [6]),
    (K("UID", (SequenceSet(((1000, None),)),)), [6]),         # 1000:* includes the largest
    (K("NOT", (K("SEEN"),)), [3, 4, 5]),
    (K("OR", (K("FLAGGED"), K("DRAFT"))), [2, 5]),
    (K("AND", (K("UNDELETED"), K("UNSEEN"))), [3, 5]),
    (K("AND", ()), [1, 2, 3, 4, 5, 6]),
    (K("OR", (K("NOT", (K("SEEN"),)), K("AND", (K("DELETED"), K("SMALLER", (5,)))))), [3, 4, 5, 6]),
    # internal dates, compared as UTC days
    (K("BEFORE", (d(1),)), [1, 5]), (K("ON", (d(1),)), [2]), (K("SINCE", (d(2),)), [3, 4, 6]),
    (K("ON", (d(0),)), [1]), (K("SINCE", (d(10),)), []),
    # save dates (the internal date where there is none)
    (K("SAVEDON", (d(1),)), [2]), (K("SAVEDSINCE", (d(3),)), [3, 4, 6]),
    (K("SAVEDBEFORE", (d(0),)), [5]), (K("SAVEDATESUPPORTED"), [1, 2, 3, 4, 5, 6]),
    # YOUNGER/OLDER against now = day 6
    (K("YOUNGER", (int(1.5 * DAY),)), [6]), (K("OLDER", (int(1.5 * DAY),)), [1, 2, 3, 4, 5]),
    (K("YOUNGER", (0,)), []),
])
def test_metadata_keys(key: K, expected: list[int]) -> None:
    loads = Loads()
    assert run(key, loads=loads) == expected
    assert loads.content == []


def test_uid_results() -> None:
    assert run(K("UNSEEN"), uid=True) == [30, 40, 50]


def test_recent_and_new_old() -> None:
    recent = frozenset({30, 10})
    assert run(K("RECENT"), recent=recent) == [1, 3]
    assert run(K("NEW"), recent=recent) == [3]
    assert run(K("OLD"), recent=recent) == [2, 4, 5, 6]


def test_saved_result() -> None:
    saved = SequenceSet(saved=True)
    assert run(K("SEQSET", (saved,)), saved=[20, 40, 99]) == [2, 4]
    assert run(K("UID", (saved,)), saved=[60]) == [6]
    assert run(K("SEQSET", (saved,)), saved=None) == []   # RFC 5182: nothing saved is empty


def test_many_ranges() -> None:
    ranges = tuple((n, n) for n in (1, 3, 5))
    assert run(K("SEQSET", (SequenceSet(ranges),))) == [1, 3, 5]
    assert run(K("SEQSET", (SequenceSet(((4, 2), (6, 6))),))) == [2, 3, 4, 6]


# --- headers and text ---------------------------------------------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    (K("SUBJECT", ("meeting",)), [1]),
    (K("SUBJECT", ("GRÜSSE",)), [2]),          # RFC 2047 Latin-1 word, Unicode case folding
    (K("SUBJECT", ("grüße",)), [2]),
    (K("FROM", ("jörg",)), [2]), (K("FROM", ("JOERG@EXAMPLE",)), [2]),
    (K("FROM", ("example",)), [1, 2, 3, 4]),
    (K("TO", ("alice",)), [2, 3]), (K("CC", ("carol",)), [2]), (K("BCC", ("secret",)), [4]),
    (K("HEADER", ("X-Mailer", "frobnicator")), [4]),
    (K("HEADER", ("x-mailer", "")), [4]),          # an empty string: the field exists
    (K("HEADER", ("Subject", "")), [1, 2, 3, 4, 5]),
    (K("BODY", ("noon",)), [1]),
    (K("BODY", ("grüße aus köln",)), [2]),          # 8-bit UTF-8 body
    (K("BODY", ("café crème",)), [3]),             # quoted-printable Latin-1
    (K("BODY", ("TRÈS",)), [3]),
    (K("BODY", ("ünïcödé plain",)), [4]),          # base64 UTF-8
    (K("BODY", ("click & win a prize",)), [4]),    # HTML reduced to text
    (K("BODY", ("color",)), []),                  # CSS is not text
    (K("BODY", ("meeting",)), []),                # BODY is not the header
    (K("TEXT", ("meeting",)), [1]),
    (K("TEXT", ("noon",)), [1]),
    (K("TEXT", ("x-mailer",)), [4]),
    (K("TEXT", ("garbage",)), [6]),
    (K("SUBJECT", ("nothing",)), []),
])
def test_text_keys(key: K, expected: list[int]) -> None:
    assert run(key) == expected


def test_cheap_keys_first() -> None:
    loads = Loads()
    assert run(K("AND", (K("BODY", ("noon",)), K("SEEN"), K("SMALLER", (1000,)))),
               loads=loads) == [1]
    assert loads.content == [10, 60]   # only the seen, small messages were read
    loads = Loads()
    run(K("OR", (K("SUBJECT", ("x",)), K("ALL"))), loads=loads)
    assert loads.content == []         # ALL decides first


def test_content_loaded_once_per_message() -> None:
    loads = Loads()
    run(K("AND", (K("SUBJECT", ("zzz",)), K("FROM", ("zzz",)))), loads=loads)
    assert loads.content == [10, 20, 30, 40, 50, 60]
    loads = Loads()
    run(K("OR", (K("SUBJECT", ("zzz",)), K("OR", (K("FROM", ("zzz",)), K("BODY", ("zzz",)))))),
        loads=loads)
    assert loads.content == [10, 20, 30, 40, 50, 60]


# --- sent dates -------------------------------------------------------------------------------

def test_sent_dates_in_the_senders_zone() -> None:
    # message 1 was sent on 10 March at 23:30 -0500 (11 March in UTC): the RFC says to
    # disregard the zone, so it is 10 March
    assert run(K("SENTON", (d(0),))) == [1]
    assert run(K("SENTON", (d(1),))) == [2]
    assert run(K("SENTBEFORE", (d(1),))) == [1, 5]   # 5: undated, internal date day -1
    assert run(K("SENTSINCE", (d(1),))) == [2, 3, 4, 6]
    # no readable Date header: the internal date is the sent date (RFC 5256 §2.2)
    assert run(K("SENTON", (d(2),))) == [3]
    assert run(K("SENTON", (d(-1),))) == [5]
    assert run(K("SENTSINCE", (d(3),))) == [4, 6]


def test_sent_dates_from_the_cache() -> None:
    cache = {f"b{n}": compute(MESSAGES[n]) for n in MESSAGES}
    loads = Loads()
    assert run(K("SENTON", (d(0),)), cache=cache, loads=loads) == [1]
    assert loads.content == []


def test_computed_entries_are_returned() -> None:
    computed: dict[str, CacheEntry] = {}
    ms = metas()
    search(K("SENTON", (d(0),)), ms, largest_seq=6, largest_uid=60, content=Loads(),
           cache=lambda m: None, now=NOW, computed=computed)
    assert set(computed) == {f"b{n}" for n in MESSAGES}
    assert computed["b1"] == compute(MESSAGES[1])


# --- charsets ---------------------------------------------------------------------------------

def test_charsets() -> None:
    assert search_charset(None) is None
    assert search_charset("utf-8") is None and search_charset("US-ASCII") is None
    assert search_charset("iso-8859-1") == "iso8859-1"
    with pytest.raises(BadCharset) as e:
        search_charset("x-no-such-charset")
    assert e.value.code == "BADCHARSET (UTF-8 US-ASCII)"
    with pytest.raises(BadCharset):
        search_charset("base64")   # a bytes codec is no charset
    with pytest.raises(BadCharset):
        run(K("BODY", ("x",)), charset="klingon")


def test_search_string_in_latin1() -> None:
    # the parser hands the octets over as UTF-8 with surrogateescape
    latin1 = "crème".encode("latin-1").decode("utf-8", "surrogateescape")
    assert run(K("BODY", (latin1,)), charset="ISO-8859-1") == [3]
    assert run(K("HEADER", ("Subject", "gr\udcfc")), charset="ISO-8859-1") == [2]
    assert run(K("BODY", ("crème",)), charset="UTF-8") == [3]


# --- errors -----------------------------------------------------------------------------------

def test_bad_keys() -> None:
    with pytest.raises(SearchError):
        run(K("FROBNICATE"))
    with pytest.raises(SearchError):
        run(K("LARGER", ("big",)))
    with pytest.raises(SearchError):
        run(K("BEFORE", ("yesterday",)))
    with pytest.raises(SearchError):
        run(K("NOT", ("SEEN",)))


def test_search_never_raises_on_the_mime_corpus() -> None:
    from tests.mime.corpus import corpus

    data = list(corpus().values())
    ms = [(i, MessageMeta(uid=i, flags=frozenset(), modseq=1, internal_date=0.0,
                          size=len(m), blob=str(i))) for i, m in enumerate(data, 1)]
    key = K("OR", (K("TEXT", ("café",)), K("OR", (K("BODY", ("hello",)),
                                                   K("AND", (K("FROM", ("jörg",)),
                                                             K("SENTSINCE", (d(0),))))))))
    found = search(key, ms, largest_seq=len(ms), largest_uid=len(ms),
                   content=lambda m: data[m.uid - 1], cache=lambda m: None, now=NOW)
    assert 0 < len(found) < len(ms)


def one(data: bytes, key: K) -> bool:
    m = MessageMeta(uid=1, flags=frozenset(), modseq=1, internal_date=0.0, size=len(data),
                    blob="x")
    return search(key, [(1, m)], largest_seq=1, largest_uid=1, content=lambda _: data,
                  cache=lambda _: None, now=0.0) == [1]


FORWARD = message(
    "Subject: Fwd: minutes", "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="m"',
    "", "--m", "Content-Type: text/plain", "", "see below", "--m",
    "Content-Type: message/rfc822", 'Content-Disposition: inline; filename="minutes.eml"', "",
    "From: =?utf-8?q?Bj=C3=B6rk?= <bjork@example.is>", "Subject: minutes", "",
    "the minutes", "--m",
    "Content-Type: message/delivery-status", "", "Reporting-MTA: dns; mx.example.net", "",
    "Final-Recipient: rfc822; gone@example.org", "--m--", "")


def test_body_sees_encapsulated_headers_and_reports() -> None:
    assert one(FORWARD, K("BODY", ("björk",)))            # the forwarded message's From
    assert one(FORWARD, K("BODY", ("the minutes",)))
    assert one(FORWARD, K("BODY", ("gone@example.org",)))  # a delivery report is text
    assert not one(FORWARD, K("BODY", ("minutes.eml",)))   # MIME headers are not body
    assert not one(FORWARD, K("BODY", ("fwd:",)))          # nor the message's own header
    assert not one(FORWARD, K("FROM", ("björk",)))          # FROM is the top-level header


def test_text_sees_every_header_block() -> None:
    assert one(FORWARD, K("TEXT", ("minutes.eml",)))       # MIME header fields (RFC 9051)
    assert one(FORWARD, K("TEXT", ("fwd: minutes",)))
    assert one(FORWARD, K("TEXT", ("see below",)))
    assert not one(FORWARD, K("TEXT", ("nowhere",)))
