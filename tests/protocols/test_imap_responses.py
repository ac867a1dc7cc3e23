"""IMAP responses rendering themselves (``pillarbox.protocols.imap.responses``).

Expected bytes follow the examples of RFC 9051 §7 and the extension RFCs.
"""

from __future__ import annotations

import pytest

from pillarbox.protocols.imap import commands as c
from pillarbox.protocols.imap import responses as r


@pytest.mark.parametrize(
    ("response", "wire"),
    [
        (r.Tagged("A142", "OK", "SELECT completed", r.READ_WRITE),
         b"A142 OK [READ-WRITE] SELECT completed\r\n"),
        (r.Tagged("a", "NO", "No such mailbox", r.TRYCREATE),
         b"a NO [TRYCREATE] No such mailbox\r\n"),
        (r.Tagged("a", "BAD", "line1\r\nline2"), b"a BAD line1  line2\r\n"),
        (r.Tagged("*", "BAD", "no tag"), b"* BAD no tag\r\n"),
        (r.Untagged("OK", "IMAP4rev2 server ready", r.CapabilityCode(("IMAP4rev2", "AUTH=PLAIN"))),
         b"* OK [CAPABILITY IMAP4rev2 AUTH=PLAIN] IMAP4rev2 server ready\r\n"),
        (r.Untagged("OK", "Limited", r.PermanentFlags(("\\Deleted", "\\Seen", "\\*"))),
         b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"),
        (r.Untagged("OK", "Predicted next UID", r.UidNext(4392)),
         b"* OK [UIDNEXT 4392] Predicted next UID\r\n"),
        (r.Untagged("OK", "UIDs valid", r.UidValidity(3857529045)),
         b"* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"),
        (r.Untagged("OK", "first unseen", r.Unseen(12)), b"* OK [UNSEEN 12] first unseen\r\n"),
        (r.Untagged("OK", "Highest", r.HighestModseq(715194045007)),
         b"* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"),
        (r.Untagged("OK", "Sorry, no modseq", r.NOMODSEQ), b"* OK [NOMODSEQ] Sorry, no modseq\r\n"),
        (r.Untagged("OK", "Previous mailbox is now closed", r.CLOSED),
         b"* OK [CLOSED] Previous mailbox is now closed\r\n"),
        (r.Tagged("d105", "OK", "Conditional STORE failed", r.Modified((7, 9, 8))),
         b"d105 OK [MODIFIED 7:9] Conditional STORE failed\r\n"),
        (r.Tagged("A003", "OK", "APPEND completed", r.AppendUid(38505, (3955,))),
         b"A003 OK [APPENDUID 38505 3955] APPEND completed\r\n"),
        (r.Tagged("A004", "OK", "Done", r.CopyUid(38505, (304, 319, 320), (3956, 3957, 3958))),
         b"A004 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"),
        (r.Tagged("a", "NO", "Bad charset", r.BadCharset(("UTF-8", "US-ASCII"))),
         b"a NO [BADCHARSET (UTF-8 US-ASCII)] Bad charset\r\n"),
        (r.Tagged("a", "NO", "Bad charset", r.BadCharset()), b"a NO [BADCHARSET] Bad charset\r\n"),
        (r.Untagged("NO", "Quota exceeded", r.OVERQUOTA), b"* NO [OVERQUOTA] Quota exceeded\r\n"),
        (r.Untagged("BYE", "Autologout; idle for too long"),
         b"* BYE Autologout; idle for too long\r\n"),
        (r.Untagged("PREAUTH", "Hello Joe"), b"* PREAUTH Hello Joe\r\n"),
        (r.Untagged("OK", "", r.ALERT), b"* OK [ALERT]\r\n"),
        (r.Untagged("NO", "Read the web", r.Code("WEBALERT", "https://x.test/")),
         b"* NO [WEBALERT https://x.test/] Read the web\r\n"),
        (r.Continuation("Ready for additional command text"),
         b"+ Ready for additional command text\r\n"),
        (r.Continuation(data=b"\x00bob"), b"+ AGJvYg==\r\n"),
        (r.Continuation(data=b""), b"+ \r\n"),
        (r.Continuation(), b"+ \r\n"),
    ],
)
def test_status_responses(response: r.Response, wire: bytes) -> None:
    assert response.render() == wire


CODES = [r.ALERT, r.READ_ONLY, r.READ_WRITE, r.TRYCREATE, r.NOMODSEQ, r.UIDNOTSTICKY, r.CLOSED,
         r.TOOBIG, r.OVERQUOTA, r.LIMIT, r.AUTHENTICATIONFAILED, r.AUTHORIZATIONFAILED,
         r.UNAVAILABLE, r.NONEXISTENT, r.ALREADYEXISTS, r.CANNOT, r.INUSE, r.NOPERM, r.SERVERBUG,
         r.CLIENTBUG, r.PRIVACYREQUIRED, r.CONTACTADMIN, r.EXPUNGEISSUED, r.CORRUPTION, r.EXPIRED,
         r.HASCHILDREN, r.NOTSAVED, r.UNKNOWN_CTE, r.PARSE]


@pytest.mark.parametrize("code", CODES)
def test_simple_codes(code: r.Code) -> None:
    assert code.render() == b"[" + code.name.encode() + b"]"


@pytest.mark.parametrize(
    ("response", "wire", "utf8"),
    [
        (r.CapabilityData(("IMAP4rev2", "STARTTLS")), b"* CAPABILITY IMAP4rev2 STARTTLS\r\n",
         False),
        (r.EnabledData(("CONDSTORE",)), b"* ENABLED CONDSTORE\r\n", False),
        (r.EnabledData(()), b"* ENABLED\r\n", False),
        (r.FlagsData(("\\Answered", "\\Flagged", "$Forwarded")),
         b"* FLAGS (\\Answered \\Flagged $Forwarded)\r\n", False),
        (r.ListData("INBOX", "/", ("\\HasNoChildren",)),
         b'* LIST (\\HasNoChildren) "/" INBOX\r\n', False),
        (r.ListData("Sent Items", ".", ("\\Sent",)), b'* LIST (\\Sent) "." "Sent Items"\r\n',
         False),
        (r.ListData("Foo", "/", childinfo=("SUBSCRIBED",)),
         b'* LIST () "/" Foo ("CHILDINFO" ("SUBSCRIBED"))\r\n', False),
        (r.ListData("NewMailbox", "/", oldname="OldMailbox"),
         b'* LIST () "/" NewMailbox ("OLDNAME" (OldMailbox))\r\n', False),
        (r.ListData("", None, ("\\Noselect",)), b'* LIST (\\Noselect) NIL ""\r\n', False),
        (r.ListData("a\\b", "\\"), b'* LIST () "\\\\" "a\\\\b"\r\n', False),
        (r.ListData("NIL"), b'* LIST () "/" "NIL"\r\n', False),
        (r.ListData("Entwürfe"), b'* LIST () "/" Entw&APw-rfe\r\n', False),
        (r.ListData("Entwürfe"), '* LIST () "/" "Entwürfe"\r\n'.encode(), True),
        (r.ListData("Tom&Jerry"), b'* LIST () "/" Tom&-Jerry\r\n', False),
        (r.ListData("Tom&Jerry"), b'* LIST () "/" Tom&Jerry\r\n', True),
        (r.ListData("news", lsub=True), b'* LSUB () "/" news\r\n', False),
        (r.StatusData("blurdybloop", (("MESSAGES", 231), ("UIDNEXT", 44292))),
         b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n", False),
        (r.StatusData("Entwürfe", (("UNSEEN", 0),)), b"* STATUS Entw&APw-rfe (UNSEEN 0)\r\n",
         False),
        (r.SearchData((2, 3, 6)), b"* SEARCH 2 3 6\r\n", False),
        (r.SearchData(()), b"* SEARCH\r\n", False),
        (r.SearchData((2, 5), modseq=917162500), b"* SEARCH 2 5 (MODSEQ 917162500)\r\n", False),
        (r.ESearchData("A282", (("MIN", 2), ("COUNT", 3))),
         b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n', False),
        (r.ESearchData("A283", (("ALL", (2, 10, 11, 12, 4, 3)),), uid=True),
         b'* ESEARCH (TAG "A283") UID ALL 2:4,10:12\r\n', False),
        (r.ESearchData("a", ()), b'* ESEARCH (TAG "a")\r\n', False),
        (r.ESearchData(None, (("COUNT", 0),)), b"* ESEARCH COUNT 0\r\n", False),
        (r.Exists(23), b"* 23 EXISTS\r\n", False),
        (r.Recent(5), b"* 5 RECENT\r\n", False),
        (r.Expunged(3), b"* 3 EXPUNGE\r\n", False),
        (r.Vanished((405, 407, 406, 410)), b"* VANISHED 405:407,410\r\n", False),
        (r.Vanished((41, 43, 44), earlier=True), b"* VANISHED (EARLIER) 41,43:44\r\n", False),
        (r.FetchData(12, b"FLAGS (\\Seen) UID 4"), b"* 12 FETCH (FLAGS (\\Seen) UID 4)\r\n",
         False),
        (r.FetchData(1, (b"UID 7", b"BODY[] {5}\r\nhello")),
         b"* 1 FETCH (UID 7 BODY[] {5}\r\nhello)\r\n", False),
        (r.NamespaceData(), b'* NAMESPACE (("" "/")) NIL NIL\r\n', False),
        (r.NamespaceData((("", "/"),), (("~", "/"),), (("#shared/", "/"), ("#public/", "/"))),
         b'* NAMESPACE (("" "/")) (("~" "/")) (("#shared/" "/")("#public/" "/"))\r\n', False),
        (r.NamespaceData((("", None),)), b'* NAMESPACE (("" NIL)) NIL NIL\r\n', False),
        (r.IdData((("name", "Pillarbox"), ("support-url", None))),
         b'* ID ("name" "Pillarbox" "support-url" NIL)\r\n', False),
        (r.IdData(None), b"* ID NIL\r\n", False),
        (r.QuotaData("", (("STORAGE", 10, 512),)), b'* QUOTA "" (STORAGE 10 512)\r\n', False),
        (r.QuotaRootData("INBOX", ("",)), b'* QUOTAROOT INBOX ""\r\n', False),
        (r.QuotaRootData("comp.mail.mime"), b"* QUOTAROOT comp.mail.mime\r\n", False),
        (r.SortData((2, 84, 882)), b"* SORT 2 84 882\r\n", False),
        (r.SortData(()), b"* SORT\r\n", False),
        (r.SortData((5, 3), modseq=9), b"* SORT 5 3 (MODSEQ 9)\r\n", False),
        (r.ThreadData(((2,), (3, 6, (4, 23), (44, 7, 96)))),
         b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n", False),
        (r.ThreadData((((3,), (5,)),)), b"* THREAD ((3)(5))\r\n", False),
        (r.ThreadData(()), b"* THREAD\r\n", False),
    ],
)
def test_data_responses(response: r.Response, wire: bytes, utf8: bool) -> None:
    assert response.render(utf8) == wire


@pytest.mark.parametrize(
    ("numbers", "text"),
    [
        ([], ""),
        ([1], "1"),
        ([1, 2, 3, 4, 5, 7], "1:5,7"),
        ([1, 3, 5], "1,3,5"),
        ([304, 319, 320], "304,319:320"),
        ([5, 4, 3], "5,4,3"),           # order kept (COPYUID pairs by order)
        ([2, 3, 10, 11], "2:3,10:11"),
    ],
)
def test_sequence_set(numbers: list[int], text: str) -> None:
    assert r.sequence_set(numbers) == text


def test_render_sequence_set() -> None:
    assert r.render_sequence_set(c.SequenceSet(((1, 4), (7, 7), (9, None)))) == "1:4,7,9:*"
    assert r.render_sequence_set(c.SequenceSet(saved=True)) == "$"


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"abc", b"abc"),
        (b"", b'""'),
        (b"a b", b'"a b"'),
        (b"nil", b'"nil"'),
        (b'a"b', b'"a\\"b"'),
        (b"a]b", b"a]b"),
        (b"x\r\ny", b"{4}\r\nx\r\ny"),
        ("é".encode(), b"{2}\r\n\xc3\xa9"),
    ],
)
def test_astring(value: bytes, wire: bytes) -> None:
    assert r.astring(value) == wire


def test_string_in_utf8_mode_quotes_utf8_but_not_junk() -> None:
    assert r.string("é".encode(), utf8=True) == '"é"'.encode()
    assert r.string(b"\xff", utf8=True) == b"{1}\r\n\xff"


def test_rejection() -> None:
    assert r.rejection(c.BadCommand("a", "Literal over 10 octets", "TOOBIG")).render() == (
        b"a BAD [TOOBIG] Literal over 10 octets\r\n")
    assert r.rejection(c.BadCommand("a", "Too big", "TOOBIG", "NO")).render() == (
        b"a NO [TOOBIG] Too big\r\n")
    assert r.rejection(c.BadCommand("a", "x", "BADCHARSET (US-ASCII UTF-8)", "NO")).render() == (
        b"a NO [BADCHARSET (US-ASCII UTF-8)] x\r\n")
    assert r.rejection(c.BadCommand("*", "no tag")).render() == b"* BAD no tag\r\n"
