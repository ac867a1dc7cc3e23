"""SORT and THREAD (pillarbox.access.sort, pillarbox.access.thread), base subjects (cache)."""

from __future__ import annotations

import pytest

from pillarbox.access.cache import CacheEntry, base_subject, compute, fold, message_ids
from pillarbox.access.sort import SortError, sort
from pillarbox.access.thread import ThreadError, _Node, render, thread
from pillarbox.protocols.imap.commands import SortKey
from pillarbox.store.base import MessageMeta

# --- base subject (RFC 5256 §2.1) ----------------------------------------------------------

@pytest.mark.parametrize(("subject", "base", "reply"), [
    (b"Hello", "HELLO", False),
    (b"Re: Hello", "HELLO", True),
    (b"RE: hello", "HELLO", True),
    (b"re:hello", "HELLO", True),
    (b"Re: Re: Re: Hello", "HELLO", True),
    (b"Fwd: Hello", "HELLO", True),
    (b"Fw: Hello", "HELLO", True),
    (b"FWD : Hello", "HELLO", True),                  # *WSP before ":"
    (b"Re[2]: Hello", "HELLO", True),                 # a blob inside subj-refwd
    (b"Re [2] : Hello", "HELLO", True),
    (b"[list] Hello", "HELLO", False),                # a blob before the base: removed
    (b"[list] Re: Hello", "HELLO", True),             # blobs then refwd: a leader
    (b"Re: [list] Hello", "HELLO", True),
    (b"[a][b] Re: [c] Fwd: [d] Hello", "HELLO", True),
    (b"[list]", "[LIST]", False),                     # the blob is the subject
    (b"Re: [list]", "[LIST]", True),
    (b"[a] [b]", "[B]", False),                       # the last blob stays
    (b"Hello (fwd)", "HELLO", True),                  # subj-trailer
    (b"Hello (FWD) (fwd)  ", "HELLO", True),
    (b"Hello(fwd)", "HELLO", True),
    (b"[Fwd: Hello]", "HELLO", True),                 # subj-fwd
    (b"[fwd: Re: Hello (fwd)]", "HELLO", True),
    (b"Re: [Fwd: [list] Re: Hello]", "HELLO", True),
    (b"[fwd: Hello", "[FWD: HELLO", False),            # no trailer: not a subj-fwd
    (b"  Hello   world  ", "HELLO WORLD", False),      # whitespace runs collapse
    (b"Hello\r\n\tworld", "HELLO WORLD", False),       # folding is a space
    (b"Ref: Hello", "REF: HELLO", False),              # not "re"
    (b"Fwdx: Hello", "FWDX: HELLO", False),
    (b"Re Hello", "RE HELLO", False),                 # no colon
    (b"", "", False),
    (b"Re:", "", True),
    (b"   ", "", False),
    (b"=?utf-8?q?Re=3A_caf=C3=A9?=", "CAFÉ", True),   # RFC 2047 first, then the leaders
    (b"=?iso-8859-1?q?Stra=DFe?=", "STRAßE", False),   # ß has no simple titlecase
    (b"Re: =?utf-8?b?5pel5pys6Kqe?=", "日本語", True),
])
def test_base_subject(subject: bytes, base: str, reply: bool) -> None:
    assert base_subject(subject) == (fold(base), reply)


def test_fold_is_ascii_casemap_for_ascii() -> None:
    # i;ascii-casemap upper-cases: "_" (0x5F) sorts after "A" (0x41)
    assert fold("a") < fold("_")
    assert fold("Hello") == "HELLO"


def test_fold_is_unicode_casemap() -> None:
    # RFC 5051: titlecase, then decomposed: Ä is A + U+0308, between ALICE and BOB
    assert fold("Ärger") == fold("ÄRGER") == "A\u0308RGER"
    assert fold("alice") < fold("ärger") < fold("bob")
    assert fold("ﬁle") == "FILE"      # NFKD: the ligature is two letters


def test_message_ids() -> None:
    assert message_ids(b"<a@b> <c@d>\r\n <e@f>") == ["a@b", "c@d", "e@f"]
    assert message_ids(b"<a@b> (comment <x@y>) <nodomain> junk") == ["a@b"]
    assert message_ids(b"Your message of Monday <a@b>") == ["a@b"]
    assert message_ids(None) == [] and message_ids(b"") == []


# --- helpers ----------------------------------------------------------------------------------

def msg(subject: str | None = None, mid: str | None = None, refs: str | None = None,
        irt: str | None = None, date: str | None = None, frm: str | None = None,
        to: str | None = None, cc: str | None = None) -> bytes:
    lines = []
    for name, value in (("Subject", subject), ("Message-ID", mid), ("References", refs),
                        ("In-Reply-To", irt), ("Date", date), ("From", frm), ("To", to),
                        ("Cc", cc)):
        if value is not None:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


class Box:
    """A mailbox of messages numbered from 1, UIDs 10 times the number."""

    def __init__(self, *messages: bytes, internal: list[float] | None = None,
                 sizes: list[int] | None = None):
        self.data = list(messages)
        self.metas = [
            (i, MessageMeta(uid=i * 10, flags=frozenset(), modseq=1,
                            internal_date=internal[i - 1] if internal else 1_000_000.0 + i,
                            size=sizes[i - 1] if sizes else len(m), blob=f"b{i}"))
            for i, m in enumerate(messages, 1)]
        self.loaded: list[int] = []

    def content(self, m: MessageMeta) -> bytes:
        self.loaded.append(m.uid // 10)
        return self.data[m.uid // 10 - 1]

    def sort(self, *criteria: str, cache: dict[str, CacheEntry] | None = None,
             uid: bool = False) -> list[int]:
        keys = []
        reverse = False
        for c in criteria:
            if c == "REVERSE":
                reverse = True
                continue
            keys.append(SortKey(c, reverse))
            reverse = False
        return sort(keys, self.metas, cache=lambda m: (cache or {}).get(m.blob),
                    content=self.content, uid=uid)

    def thread(self, algorithm: str = "REFERENCES", uid: bool = False) -> bytes:
        return thread(algorithm, self.metas, cache=lambda m: None, content=self.content, uid=uid)


def date(minute: int, zone: str = "+0000", day: int = 1) -> str:
    return f"Mon, {day} Jan 2024 10:{minute:02d}:00 {zone}"


# --- SORT -------------------------------------------------------------------------------------

def test_sort_arrival_size_need_no_content() -> None:
    box = Box(msg(), msg(), msg(), internal=[30.0, 10.0, 20.0], sizes=[5, 5, 1])
    assert box.sort("ARRIVAL") == [2, 3, 1]
    assert box.sort("REVERSE", "ARRIVAL") == [1, 3, 2]
    assert box.sort("SIZE") == [3, 1, 2]           # ties in mailbox order
    assert box.sort("REVERSE", "SIZE") == [1, 2, 3]  # REVERSE does not reverse the ties
    assert box.sort("SIZE", "REVERSE", "ARRIVAL") == [3, 1, 2]
    assert box.loaded == []


def test_sort_date_uses_utc_and_falls_back_to_internal_date() -> None:
    box = Box(msg(date=date(0, "-0100")),       # 11:00 UTC
              msg(date=date(30, "+0000")),      # 10:30 UTC
              msg(),                            # no Date: internal date (1970)
              msg(date="not a date"),           # unreadable: internal date
              msg(date=date(30, "+0000")))
    assert box.sort("DATE") == [3, 4, 2, 5, 1]
    assert box.sort("REVERSE", "DATE") == [1, 2, 5, 4, 3]
    assert box.sort("DATE", uid=True) == [30, 40, 20, 50, 10]


def test_sort_subject() -> None:
    box = Box(msg("Re: beta"), msg("alpha"), msg("[list] Beta"), msg(), msg("Fwd: ALPHA"),
              msg("=?utf-8?q?=C3=84rger?="))
    # empty subject first; equal base subjects in mailbox order; Ä right after A
    assert box.sort("SUBJECT") == [4, 2, 5, 6, 1, 3]
    assert box.sort("SUBJECT", "REVERSE", "ARRIVAL") == [4, 5, 2, 6, 3, 1]


def test_sort_addresses() -> None:
    box = Box(msg(frm="Zed <alice@z.example>", to="bob@x", cc="c@x"),
              msg(frm="Bob <Bob@a.example>, alice@b", to="Alice <zz@y>"),
              msg(frm="undisclosed:;", to="group: m@x;"),
              msg(frm="\"Aaron\" <carl@c>", to="AA@y", cc="B <b@x>"))
    # FROM: the local part of the first mailbox, case-insensitive; a group counts as
    # its name (the mailbox of its ENVELOPE start marker, as Dovecot and imaptest's
    # sort-addresses have it); none sorts first
    assert box.sort("FROM") == [1, 2, 4, 3]
    assert box.sort("TO") == [4, 1, 3, 2]
    assert box.sort("CC") == [2, 3, 4, 1]
    # DISPLAYFROM (RFC 5957): the display name, else the address
    assert box.sort("DISPLAYFROM") == [4, 2, 3, 1]
    assert box.sort("DISPLAYTO") == [4, 2, 1, 3]


def test_sort_display_encoded_name() -> None:
    box = Box(msg(frm="=?utf-8?q?Zo=C3=AB?= <a@x>"), msg(frm="yann <b@x>"), msg(frm="<c@x>"))
    assert box.sort("DISPLAYFROM") == [3, 2, 1]   # "c@x", "yann", "zoë"


def test_sort_uses_the_cache() -> None:
    data = [msg("b"), msg("a")]
    box = Box(*data)
    cache = {f"b{i}": compute(m) for i, m in enumerate(data, 1)}
    assert box.sort("SUBJECT", cache=cache) == [2, 1]
    assert box.loaded == []
    assert box.sort("SUBJECT") == [2, 1]
    assert box.loaded == [1, 2]


def test_sort_multiple_criteria() -> None:
    box = Box(msg("b", date=date(1)), msg("a", date=date(2)), msg("a", date=date(1)),
              msg("b", date=date(1)))
    assert box.sort("SUBJECT", "DATE") == [3, 2, 1, 4]
    assert box.sort("SUBJECT", "REVERSE", "DATE") == [2, 3, 1, 4]
    assert box.sort("REVERSE", "SUBJECT", "DATE") == [1, 4, 3, 2]


def test_sort_unknown_criterion() -> None:
    with pytest.raises(SortError):
        Box(msg()).sort("COLOUR")


# --- THREAD: rendering ------------------------------------------------------------------------

def node(number: int | None, *children: _Node) -> _Node:
    n = _Node()
    n.number = number
    n.children = list(children)
    return n


def test_render_rfc_example() -> None:
    # RFC 5256 §4: (2)(3 6 (4 23)(44 7 96))
    roots = [node(2), node(3, node(6, node(4, node(23)), node(44, node(7, node(96)))))]
    assert render(roots) == b"(2)(3 6 (4 23)(44 7 96))"


def test_render_dummy_and_empty() -> None:
    assert render([node(None, node(3), node(5))]) == b"((3)(5))"
    assert render([node(1, node(2), node(3, node(4)))]) == b"(1 (2)(3 4))"
    assert render([]) == b""


def test_render_deep_chain() -> None:
    root = tail = node(1)
    for i in range(2, 5001):
        child = node(i)
        tail.children = [child]
        tail = child
    out = render([root])
    assert out.startswith(b"(1 2 3 ") and out.endswith(b" 4999 5000)")


# --- THREAD ORDEREDSUBJECT ----------------------------------------------------------------------

def test_orderedsubject() -> None:
    box = Box(msg("hello", date=date(5)), msg("Re: hello", date=date(1)),
              msg("other", date=date(3)), msg("Re: Hello", date=date(9)),
              msg("re: other", date=date(4)), msg("single", date=date(2)),
              msg("Re: hello", date=date(7)))
    # threads by base subject, first message (by sent date) the parent of the others,
    # threads in order of their first message
    assert box.thread("ORDEREDSUBJECT") == b"(2 (1)(7)(4))(6)(3 5)"
    assert box.thread("orderedsubject", uid=True) == b"(20 (10)(70)(40))(60)(30 50)"


def test_orderedsubject_ties_by_sequence() -> None:
    box = Box(msg("x"), msg("x"), msg("x"), internal=[5.0, 5.0, 1.0])
    assert box.thread("ORDEREDSUBJECT") == b"(3 (1)(2))"


def test_unknown_algorithm() -> None:
    with pytest.raises(ThreadError):
        Box(msg()).thread("REFS")


def test_empty_thread() -> None:
    assert Box().thread() == b""


# --- THREAD REFERENCES ---------------------------------------------------------------------------

def test_references_chain_and_branches() -> None:
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("Re: a", "<2@x>", "<1@x>", date=date(2)),
              msg("Re: a", "<3@x>", "<1@x> <2@x>", date=date(3)),
              msg("Re: a", "<4@x>", "<1@x>", date=date(4)),
              msg("b", "<5@x>", date=date(5)))
    assert box.thread() == b"(1 (2 3)(4))(5)"


def test_in_reply_to_when_no_references() -> None:
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("b", "<2@x>", irt="<1@x> <zz@x>", date=date(2)),
              msg("c", "<3@x>", refs="no ids here", irt="<2@x>", date=date(3)))
    assert box.thread() == b"(1 2 3)"


def test_missing_parent_becomes_dummy_and_is_pruned() -> None:
    # 2 and 3 reply to a message we do not have: a dummy with two children at the top
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("x", "<2@x>", "<gone@x>", date=date(2)),
              msg("y", "<3@x>", "<gone@x>", date=date(3)),
              msg("z", "<4@x>", "<gone2@x>", date=date(4)))
    assert box.thread() == b"(1)((2)(3))(4)"


def test_dummy_below_the_top_is_replaced_by_its_children() -> None:
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("b", "<3@x>", "<1@x> <gone@x>", date=date(2)),
              msg("c", "<4@x>", "<1@x> <gone@x>", date=date(3)))
    assert box.thread() == b"(1 (2)(3))"


def test_references_order_of_links_is_kept() -> None:
    # 3's References say 1 -> 2; 2 itself claims no parent: its own message breaks the link
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("b", "<3@x>", "<1@x> <2@x>", date=date(3)),
              msg("c", "<2@x>", date=date(2)))
    assert box.thread() == b"(1)(3 2)"


def test_duplicate_and_missing_message_ids() -> None:
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("b", "<1@x>", date=date(2)),      # a duplicate: a message of its own
              msg("c", None, "<1@x>", date=date(3)),  # no id: still threaded under 1
              msg("d", None, date=date(4)))
    assert box.thread() == b"(1 3)(2)(4)"


def test_reference_loops_are_broken() -> None:
    box = Box(msg("a", "<1@x>", "<2@x>", date=date(1)),
              msg("b", "<2@x>", "<1@x>", date=date(2)),
              msg("c", "<3@x>", "<3@x>", date=date(3)))   # refers to itself
    out = box.thread()
    assert out in (b"(1 2)(3)", b"(2 1)(3)")
    assert out == b"(2 1)(3)"   # 1 came first and became a child of 2 when 2 was read


def test_subject_merging() -> None:
    box = Box(msg("hello", "<1@x>", date=date(1)),
              msg("hello", "<2@x>", date=date(2)),        # same subject, not a reply: a dummy
              msg("Re: hello", "<3@x>", date=date(3)),    # a reply: joins the dummy
              msg("other", "<4@x>", date=date(4)),
              msg("Re: other", "<5@x>", date=date(5)),    # a reply: child of 4
              msg("Re: third", "<6@x>", date=date(6)),
              msg("third", "<7@x>", date=date(7)))        # 7 is the thread, 6 its child
    assert box.thread() == b"((1)(2)(3))(4 5)(7 6)"


def test_subject_merging_of_two_dummies() -> None:
    box = Box(msg("s", "<1@x>", "<g1@x>", date=date(1)),
              msg("s", "<2@x>", "<g1@x>", date=date(2)),
              msg("Re: s", "<3@x>", "<g2@x>", date=date(3)),
              msg("Re: s", "<4@x>", "<g2@x>", date=date(4)))
    assert box.thread() == b"((1)(2)(3)(4))"


def test_empty_subjects_are_not_merged() -> None:
    box = Box(msg(None, "<1@x>", date=date(1)), msg("", "<2@x>", date=date(2)),
              msg("Re:", "<3@x>", date=date(3)))
    assert box.thread() == b"(1)(2)(3)"


def test_siblings_sorted_by_sent_date() -> None:
    box = Box(msg("a", "<1@x>", date=date(1)),
              msg("Re: a", "<2@x>", "<1@x>", date=date(9)),
              msg("Re: a", "<3@x>", "<1@x>", date=date(5)),
              msg("Re: a", "<4@x>", "<1@x>"),            # no Date: internal date (1970)
              msg("b", "<5@x>", date=date(0)))
    assert box.thread() == b"(5)(1 (4)(3)(2))"


def test_top_level_dummy_sorted_by_its_first_child() -> None:
    box = Box(msg("a", "<1@x>", date=date(5)),
              msg("x", "<2@x>", "<gone@x>", date=date(9)),
              msg("y", "<3@x>", "<gone@x>", date=date(1)))
    assert box.thread() == b"((3)(2))(1)"


def test_long_conversation_is_not_recursive() -> None:
    messages = [msg("a", "<0@x>", date=date(0))]
    for i in range(1, 3000):   # each a reply to the one before, References cut to 20 ids
        refs = " ".join(f"<{j}@x>" for j in range(max(0, i - 20), i))
        messages.append(msg("Re: a", f"<{i}@x>", refs, date=date(i % 60, day=1 + i // 60 % 28)))
    box = Box(*messages)
    out = box.thread()
    assert out.startswith(b"(1 2 3 ") and out.count(b"(") == 1


def test_sort_and_thread_never_raise_on_the_mime_corpus() -> None:
    from tests.mime.corpus import corpus

    box = Box(*corpus().values())
    everything = list(range(1, len(box.data) + 1))
    for key in ("SUBJECT", "FROM", "TO", "CC", "DATE", "DISPLAYFROM", "DISPLAYTO"):
        assert sorted(box.sort(key)) == everything
    for algorithm in ("REFERENCES", "ORDEREDSUBJECT"):
        numbers = [int(n) for n in
                   box.thread(algorithm).replace(b"(", b" ").replace(b")", b" ").split()]
        assert sorted(numbers) == everything
