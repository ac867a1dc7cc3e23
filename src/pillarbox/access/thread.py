"""THREAD: the messages of a search result grouped into conversations (RFC 5256 §4).

Two algorithms:

- ORDEREDSUBJECT: messages sorted by base subject and sent date; each run of
  one base subject is a thread whose first message is the parent of the others;
  threads in the order of their first message's sent date.
- REFERENCES: the algorithm of RFC 5256 §4, steps 1 to 6, after Jamie
  Zawinski's: messages linked by References (else the first id of
  In-Reply-To), dummies pruned, threads of one base subject merged, siblings
  sorted by sent date.

"Sent date" is that of RFC 5256 §2.2 (the Date header, else the internal date),
ties broken by sequence number. The answer is the rendered thread list of the
``* THREAD`` response, ``(2)(3 6 (4 23)(44 7 96))``. Every walk over a tree is
iterative: a long conversation is a deep tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..store.base import MessageMeta
from .cache import CacheEntry, lookup, sent_date

__all__ = ["THREAD_ALGORITHMS", "ThreadError", "render", "thread"]

#: The algorithms :func:`thread` knows, for the capability list (THREAD=...).
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class ThreadError(ValueError):
    """An algorithm we do not know (the parser lets none through)."""


class _Node:
    """A container of the REFERENCES algorithm: a message, or a dummy (``number`` None)."""

    __slots__ = ("children", "entry", "key", "number", "parent")

    def __init__(self) -> None:
        self.number: int | None = None
        self.entry: CacheEntry | None = None
        self.key: tuple[float, int] = (0.0, 0)   # (sent date, sequence number)
        self.parent: _Node | None = None
        self.children: list[_Node] = []

    def first_message(self) -> _Node:
        node = self
        while node.number is None and node.children:
            node = node.children[0]
        return node

    def sort_key(self) -> tuple[float, int]:
        return self.key if self.number is not None else self.first_message().key


def thread(algorithm: str, messages: Sequence[tuple[int, MessageMeta]], *,
           cache: Callable[[MessageMeta], CacheEntry | None],
           content: Callable[[MessageMeta], bytes], uid: bool = False,
           computed: dict[str, CacheEntry] | None = None) -> bytes:
    """The thread list of ``messages`` (``(seq, meta)`` that matched the search) by
    ``algorithm``, with sequence numbers or, with ``uid``, UIDs; ``b""`` when empty."""
    algorithm = algorithm.upper()
    if algorithm not in THREAD_ALGORITHMS:
        raise ThreadError(f"unknown THREAD algorithm {algorithm}")
    nodes: list[_Node] = []
    for seq, meta in sorted(messages, key=lambda t: t[0]):
        n = _Node()
        n.number = meta.uid if uid else seq
        n.entry = lookup(meta, cache, content, computed)
        n.key = (sent_date(meta, n.entry), seq)
        nodes.append(n)
    roots = _ordered_subject(nodes) if algorithm == "ORDEREDSUBJECT" else _references(nodes)
    return render(roots)


# --- ORDEREDSUBJECT ------------------------------------------------------------------

def _ordered_subject(nodes: list[_Node]) -> list[_Node]:
    by_subject: dict[str, list[_Node]] = {}
    for n in sorted(nodes, key=lambda n: (_subject(n), n.key)):
        by_subject.setdefault(_subject(n), []).append(n)
    roots = []
    for group in by_subject.values():
        head = group[0]
        head.children = group[1:]
        roots.append(head)
    roots.sort(key=lambda n: n.key)
    return roots


def _subject(n: _Node) -> str:
    return n.entry.subject if n.entry is not None else ""


# --- REFERENCES ----------------------------------------------------------------------

def _would_loop(parent: _Node, child: _Node) -> bool:
    """Whether making ``child`` a child of ``parent`` closes a loop."""
    if not child.children:   # the common case: nothing below child to come back to
        return parent is child
    node: _Node | None = parent
    while node is not None:
        if node is child:
            return True
        node = node.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _references(nodes: list[_Node]) -> list[_Node]:
    # (1) link every message to its references
    table: dict[str, _Node] = {}
    containers: dict[int, _Node] = {}   # every container, by identity
    for n in nodes:
        e = n.entry
        assert e is not None
        mid = e.message_id
        container = table.get(mid) if mid is not None else None
        if container is None or container.number is not None:
            # (1A) no Message-ID, or a duplicate one: the message is unique
            container = _Node()
            if mid is not None and mid not in table:
                table[mid] = container
        container.number, container.entry, container.key = n.number, e, n.key
        refs = list(e.references) or list(e.in_reply_to[:1])
        # (1B) each reference is the parent of the next, unless already linked
        prev: _Node | None = None
        for ref in refs:
            c = table.get(ref)
            if c is None:
                c = table[ref] = _Node()
            if prev is not None and c.parent is None and not _would_loop(prev, c):
                _link(prev, c)
            prev = c
        # (1C) the last reference is the parent of this message; an earlier link goes
        _unlink(container)
        if prev is not None and not _would_loop(prev, container):
            _link(prev, container)
        containers[id(container)] = container
    for c in table.values():
        containers[id(c)] = c
    # (2) the root set: containers without parent
    roots = [c for c in containers.values() if c.parent is None]
    # (3) prune dummies
    roots = _prune(roots)
    # (4) sort the root set by sent date (a dummy by its first child, sorted first)
    for r in roots:
        if r.number is None:
            r.children.sort(key=_Node.sort_key)
    roots.sort(key=_Node.sort_key)
    # (5) merge threads of one base subject
    roots = _merge_subjects(roots)
    # (6) sort every set of siblings, the deepest first
    _sort_tree(roots)
    return roots


def _prune(roots: list[_Node]) -> list[_Node]:
    """Step 3: drop childless dummies; replace the other dummies by their children,
    except at the top when that would put more than one child there."""
    # post-order, iteratively: children are pruned before their parent
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        kept: list[_Node] = []
        for c in node.children:
            if c.number is None:
                kept.extend(c.children)   # a dummy below the top: its children move up
            else:
                kept.append(c)
        for c in kept:
            c.parent = node
        node.children = kept
    out: list[_Node] = []
    for r in roots:
        if r.number is None and len(r.children) <= 1:
            out.extend(r.children)   # an empty dummy goes; a single child takes its place
        else:
            out.append(r)
    for r in out:
        r.parent = None
    return out


def _merge_subjects(roots: list[_Node]) -> list[_Node]:
    """Step 5: gather the threads whose base subject is the same."""
    def subject_node(n: _Node) -> _Node:
        return n.children[0] if n.number is None else n

    def subject(n: _Node) -> str:
        e = subject_node(n).entry
        return e.subject if e is not None else ""

    def reply(n: _Node) -> bool:
        return n.entry is not None and n.entry.reply

    # (5B) the subject table
    table: dict[str, _Node] = {}
    for r in roots:
        s = subject(r)
        if not s:
            continue
        other = table.get(s)
        if other is None:
            table[s] = r
        elif other.number is not None and (r.number is None or (reply(other) and not reply(r))):
            table[s] = r
    # (5C) merge
    removed: set[int] = set()
    replaced: dict[int, _Node] = {}
    for r in list(roots):
        s = subject(r)
        if not s:
            continue
        other = table[s]
        if other is r:
            continue
        if other.number is None and r.number is None:
            for c in r.children:
                c.parent = other
            other.children.extend(r.children)
            r.children = []
            removed.add(id(r))
        elif other.number is None:
            _link(other, r)
            removed.add(id(r))
        elif reply(r) and not reply(other):
            _link(other, r)
            removed.add(id(r))
        else:
            dummy = _Node()
            _link(dummy, other)
            _link(dummy, r)
            removed.add(id(r))
            replaced[id(other)] = dummy
            table[s] = dummy
    out = []
    for r in roots:
        if id(r) in removed:
            continue
        while id(r) in replaced:   # a thread may be wrapped in a dummy more than once
            r = replaced[id(r)]
        out.append(r)
    for r in out:
        r.parent = None
    return out


def _sort_tree(roots: list[_Node]) -> None:
    order: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):   # children's siblings are sorted before their parent's
        node.children.sort(key=_Node.sort_key)
    roots.sort(key=_Node.sort_key)


# --- the response --------------------------------------------------------------------

def render(roots: list[_Node]) -> bytes:
    """``(2)(3 6 (4 23)(44 7 96))``: a thread is a parenthesised list; a message with
    one child continues the list, with several each child is a parenthesised list."""
    out: list[bytes] = []
    # an explicit stack of what to emit: nodes to open, and literal closing tokens
    stack: list[_Node | bytes] = []
    for r in reversed(roots):
        stack.append(b")")
        stack.append(r)
        stack.append(b"(")
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node: _Node | None = item
        while node is not None:
            kids = node.children
            if node.number is not None:
                if out and out[-1] not in (b"(",):
                    out.append(b" ")
                out.append(b"%d" % node.number)
            if len(kids) == 1 and node.number is not None:
                node = kids[0]
                continue
            if kids and node.number is not None:
                out.append(b" ")
            for k in reversed(kids):
                stack.append(b")")
                stack.append(k)
                stack.append(b"(")
            node = None
    return b"".join(out)
