"""Differential test: pillarbox.mime's IMAP renderings against Dovecot's, octet for octet.

A private Dovecot (see ``dovecot.py``) receives every corpus message by APPEND;
its FETCH of ENVELOPE, BODYSTRUCTURE, BODY, BODY[n], BODY[n.MIME] and BINARY[n]
is compared with what :mod:`pillarbox.mime.imap` renders from the message as
Dovecot stores it (``BODY[]``, which Dovecot serves with CRLF line ends).

Skipped when Dovecot is not installed, unless ``CI=true``, where that fails.
Every accepted difference is listed in :data:`_KNOWN` under one of the :data:`KINDS`,
which says why Pillarbox's answer is the better one.
"""

from __future__ import annotations

import fnmatch
import os
import re

import pytest

from pillarbox.mime.imap import bodystructure, envelope, fetch_binary, fetch_section
from pillarbox.mime.parser import Part, parse

from . import corpus as corpus_mod
from . import dovecot as dv

CORPUS = corpus_mod.differential_corpus()

#: Each kind of accepted difference → why Pillarbox's answer differs and is preferred.
KINDS: dict[str, str] = {
    "content-type-unusable": (
        "a Content-Type with no subtype or no valid one ('garbage', 'text', ';', empty, "
        "'text/plain>', '<html>') is invalid; RFC 2045 "
        "§5.2 says the default applies: text/plain; charset=us-ascii, or message/rfc822 "
        "inside a multipart/digest (RFC 2046 §5.1.5). Dovecot reports a type 'garbage' "
        "with an empty subtype and no line count, which no client can use, and inside a "
        "digest does not see the encapsulated message."),
    "empty-address": (
        "'To: a, , b' has an empty list member, which RFC 5322 §4.4 (obs-addr-list) "
        "says to ignore; Dovecot invents a MISSING_MAILBOX@MISSING_DOMAIN address."),
    "address-resync": (
        "garbage inside an address list (a bare CR that joined two header lines, "
        "'Mikel@Lindsaar <raasdnil@gmail.com>', text after a '>'): Dovecot drops every "
        "address after the damage, Pillarbox resyncs at the next comma and keeps the "
        "well-formed ones (RFC 5322 §3.4 separates addresses by commas)."),
    "disposition-unusable": (
        "a Content-Disposition with no valid type (empty, or an encoded word): Dovecot "
        "sends the disposition (\"\" NIL), an empty type; RFC 2183 §2 has no such "
        "type, and Pillarbox sends NIL, as for no disposition at all."),
    "nul-header": (
        "a NUL inside a header: Dovecot parsed its stored copy (NUL ends its C string), but "
        "it serves BODY[] with NUL turned into 0x80, and that is what Pillarbox is given "
        "here; on the original octets Pillarbox also stops at the NUL."),
    "rfc822-header-at-boundary": (
        "an encapsulated message whose header runs into the boundary (no blank line, "
        "as in bounces that return only the headers): RFC 2046 §5.1.1 attaches the CRLF "
        "before a boundary line to the boundary, so the part ends before it. Dovecot "
        "does so for every other part (the MIME header of such a part is sent without "
        "it) but counts it into a message/rfc822 body: two octets and one line more. "
        "Senders agree with RFC 2046: an attached header-only message declared "
        "'size=2231' in dovecot-thirdparty/015.eml, Pillarbox's size; Dovecot says 2233."),
    "boundary-over-80": (
        "a boundary longer than RFC 2046 §5.1.1 allows (70); Dovecot compares only its "
        "first 80 characters, so it takes the close delimiter for another boundary and "
        "reports an empty extra part. Pillarbox uses the boundary as declared."),
    "parameter-syntax": (
        "a Content-Type or Content-Disposition parameter list with a syntax error: an "
        "empty parameter (';;', also in RFC 2046's own examples), a lost ';' before a "
        "parameter (often at a fold, or 'application/pdf name=\"x.pdf\"'), an unquoted value "
        "with a tspecial ('filename=attach/01', 'method=text/calendar', "
        "'boundary=----=_Part_1', where Dovecot's boundary is '----' and it finds an extra "
        "empty part), a quoted string never closed (read to the end of the field). Dovecot "
        "stops at the error, drops the whole type, or skips "
        "to the next ';', "
        "and loses what follows (a multipart's boundary, a charset, a file name); RFC "
        "2045 §5.1 gives no recovery rule, Pillarbox reads on and keeps what the sender "
        "plainly wrote, as mail readers do."),
    "header-line-over-8k": (
        "a header line of 8 KB or more: Dovecot's header parser reads it in pieces and "
        "then keeps the whitespace after the colon (a Subject becomes a literal with "
        "the space removed, a Date or Content-Description starts with a space); "
        "Pillarbox reads the field the same whatever its length (RFC 5322 §2.2)."),
    "disposition-duplicate": (
        "two Content-Disposition fields in one part (RFC 2183 has one; a mailer added "
        "'attachment' after its 'inline'): Dovecot takes the first of every other Content-* "
        "field that occurs twice (type, encoding, ID, description, language, location, MD5) "
        "but the last Content-Disposition; Pillarbox takes the first of each, the same rule "
        "for all."),
    "rfc2231-boundary": (
        "a multipart whose boundary is written as an RFC 2231 extended value "
        "('boundary*=\"us-ascii''B2\"'), which RFC 2231 §4 allows for every parameter and "
        "mail readers decode: Dovecot joins sections ('boundary*0=…; boundary*1=…', as "
        "Pillarbox does) but takes an extended value for a parameter of another name, "
        "'boundary*', finds no boundary and shows one empty text/plain part; Pillarbox "
        "decodes it and finds the parts."),
    "multipart-header-at-boundary": (
        "the last part of a multipart is a header block that runs into an enclosing boundary "
        "(no blank line, no close delimiter): RFC 2046 §5.1.1 attaches the CRLF before a "
        "boundary line to the boundary, so the multipart ends before it. Dovecot counts it "
        "into BODY[n] of that multipart (two octets more), though its BODY[n.m] of the part "
        "itself ends before it, as Pillarbox's both do."),
}

#: (message name, item pattern, kind); the pattern is an fnmatch pattern over items
#: such as ``BODYSTRUCTURE`` or ``BODY[2.1.MIME]``.
_KNOWN: list[tuple[str, str, str]] = [
    # hand-written and generated messages
    ("bad-content-type", "BODY*", "content-type-unusable"),
    ("obsolete-addresses", "ENVELOPE", "empty-address"),
    ("gen087", "ENVELOPE", "address-resync"),
    ("gen115", "ENVELOPE", "nul-header"),
    # one message per kind first seen on real-world mail (corpus.REAL_WORLD_KINDS)
    ("part-type-unusable", "BODY", "content-type-unusable"),
    ("part-type-unusable", "BODYSTRUCTURE", "content-type-unusable"),
    ("digest-part-headers", "BODY[[]1]", "rfc822-header-at-boundary"),
    ("digest-part-headers", "B*[2.1*", "content-type-unusable"),
    ("digest-part-headers", "BODY*", "content-type-unusable"),
    ("rfc822-headers-only", "BODY*", "rfc822-header-at-boundary"),
    ("boundary-too-long", "BODY*", "boundary-over-80"),
    ("double-semicolon", "B*", "parameter-syntax"),
    ("parameter-no-semicolon", "B*", "parameter-syntax"),
    ("parameter-tspecial", "BODY*", "parameter-syntax"),
    ("subject-line-8k", "ENVELOPE", "header-line-over-8k"),
    ("rfc2231-boundary", "B*", "rfc2231-boundary"),
    ("multipart-header-at-boundary", "BODY[[]1]", "multipart-header-at-boundary"),
    ("disposition-twice", "BODYSTRUCTURE", "disposition-duplicate"),
    # the real-world messages under data/
    ("dovecot-malformed/016.eml", "B*", "boundary-over-80"),
    ("mime4j/very-long-boundary.msg", "B*", "boundary-over-80"),
    ("mime4j/very-very-long-boundary.msg", "B*", "boundary-over-80"),
    ("dovecot-malformed/017.eml", "B*", "parameter-syntax"),
    ("dovecot-thirdparty/010.eml", "BODYSTRUCTURE", "parameter-syntax"),
    ("mime-tools/double-semicolon.msg", "B*", "parameter-syntax"),
    ("php-mime-mail-parser/issue133", "BODYSTRUCTURE", "parameter-syntax"),
    ("rfc-examples/001.eml", "BODY*", "parameter-syntax"),
    ("dovecot-malformed/022.eml", "BODY*", "rfc822-header-at-boundary"),
    ("dovecot-thirdparty/015.eml", "BODY*", "rfc822-header-at-boundary"),
    ("rfc-examples/008.eml", "BODY*", "rfc822-header-at-boundary"),
    ("mime-tools/multi-digest.msg", "BODY*", "content-type-unusable"),
    ("mimekit/missing-subtype.txt", "BODY*", "content-type-unusable"),
    ("ruby-mail/attachment_emails-attachment_message_rfc822_inline_image.eml", "BODY*",
     "rfc822-header-at-boundary"),
    ("ruby-mail/error_emails-weird_to_header.eml", "ENVELOPE", "empty-address"),
    ("ruby-mail/rfc2822-example11.eml", "ENVELOPE", "empty-address"),
    ("ruby-mail/plain_emails-raw_email_with_at_display_name.eml", "ENVELOPE", "address-resync"),
    ("ruby-mail/error_emails-missing_content_disposition.eml", "BODYSTRUCTURE",
     "disposition-unusable"),
    ("ruby-mail/error_emails-multiple_invalid_content_dispositions.eml", "BODYSTRUCTURE",
     "disposition-unusable"),
    ("ruby-mail/mime_emails-raw_email_with_binary_encoded.eml", "BODY*", "parameter-syntax"),
    ("ruby-mail/mime_emails-raw_email_with_illegal_boundary.eml", "BODY*", "parameter-syntax"),
    ("ruby-mail/plain_emails-raw_email_bad_time.eml", "BODY*", "parameter-syntax"),
    ("cpython-email/msg_14.txt", "BODY*", "content-type-unusable"),
    ("enmime/dsn-dsn_with_multipart_alternative.raw", "BODY*", "rfc822-header-at-boundary"),
    ("enmime/dsn-multi_recipient_dsn.raw", "BODY*", "rfc822-header-at-boundary"),
    ("enmime/dsn-simple_dsn.raw", "BODY*", "rfc822-header-at-boundary"),
    ("enmime/dsn-simple_dsn_with_html.raw", "BODY*", "rfc822-header-at-boundary"),
    ("enmime/mail-inlinemultipart.raw", "BODYSTRUCTURE", "disposition-duplicate"),
    ("enmime/mail-malformed-multiple-address-header-values.raw", "BODYSTRUCTURE",
     "disposition-duplicate"),
    ("enmime/mail-mime-bad-content-type.raw", "BODY*", "parameter-syntax"),
    ("enmime/mail-mime-blank-media-name.raw", "BODY*", "parameter-syntax"),
    ("enmime/mail-mime-unquoted-tspecials-param.raw", "BODY*", "parameter-syntax"),
    ("enmime/parts-missing-closing-param-quote.raw", "BODY*", "parameter-syntax"),
    ("enmime/parts-unquoted-ctype-param-special.raw", "BODY*", "parameter-syntax"),
    ("enmime/parts-barren-content-type.raw", "BODY*", "content-type-unusable"),
    ("enmime/parts-ctype-invalid-characters.raw", "BODY*", "content-type-unusable"),
    ("enmime/parts-empty-ctype-bad-content.raw", "BODY*", "content-type-unusable"),
    ("cpython-email/msg_33.txt", "B*", "rfc2231-boundary"),
    ("cpython-email/msg_38.txt", "BODY[[]1]", "multipart-header-at-boundary"),
]


def known_difference(name: str, item: str) -> tuple[str, str, str] | None:
    """The entry of :data:`_KNOWN` that accepts a difference in ``item`` of ``name``."""
    for entry in _KNOWN:
        if entry[0] == name and fnmatch.fnmatchcase(item, entry[1]):
            return entry
    return None


def section_paths(root: Part) -> list[tuple[list[int], Part]]:
    """Every section-part of the message with the part it names (RFC 9051 §6.4.5)."""
    out: list[tuple[list[int], Part]] = []

    def message(m: Part, prefix: list[int]) -> None:
        if m.is_multipart:
            children(m, prefix)
        else:
            out.append((prefix + [1], m))

    def children(p: Part, prefix: list[int]) -> None:
        for i, c in enumerate(p.children, 1):
            path = prefix + [i]
            out.append((path, c))
            if c.is_multipart:
                children(c, path)
            elif c.message is not None:
                message(c.message, path)

    message(root, [])
    return out


def literal_value(raw: bytes) -> bytes | None:
    if raw == b"NIL":
        return None
    m = re.match(rb"~?\{(\d+)\}\r\n", raw)
    if m:
        return raw[m.end():]
    assert raw[:1] == b'"', raw[:40]
    return re.sub(rb"\\(.)", rb"\1", raw[1:-1])


def collect() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    with dv.PrivateDovecot() as server:
        c = server.connect()
        c.command(b"SELECT INBOX")
        seqs: dict[int, str] = {}
        for name, message in CORPUS.items():
            if c.append(b"INBOX", message):
                seqs[len(seqs) + 1] = name
            else:
                results[name] = {"rejected": True}
        for r in c.command(b"FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[])"):
            if b" FETCH " not in r[:20]:
                continue
            n, items = dv.parse_fetch(r)
            stored = literal_value(items["BODY[]"]) or b""
            results[seqs[n]] = {"stored": stored, **items}
        # every part: body and MIME header in one FETCH, BINARY alone (it may fail)
        pending: list[tuple[str, bytes]] = []

        def drain() -> None:
            for name, tag in pending:
                untagged, done = c.collect(tag)
                for r in untagged:
                    if b" FETCH " in r[:20]:
                        # Dovecot runs pipelined FETCHes in parallel: map by number
                        n, items = dv.parse_fetch(r)
                        results[seqs[n]].update(items)
                if done.split(b" ", 2)[1] != b"OK":
                    results[name].setdefault("errors", []).append(done)  # type: ignore[union-attr]
            pending.clear()

        for n, name in seqs.items():
            root = results[name]["root"] = parse(results[name]["stored"], global_messages=False)
            paths = [".".join(map(str, p)) for p, _ in section_paths(root)]
            if paths:
                items = b" ".join(b"BODY.PEEK[%s] BODY.PEEK[%s.MIME]" % (p.encode(), p.encode())
                                  for p in paths)
                pending.append((name, c.send(b"FETCH %d (%s)" % (n, items))))
            if len(pending) > 20:  # bounded pipelining: neither side's buffers fill up
                drain()
        drain()
        # BINARY one at a time: Dovecot drops the connection when decoding fails
        for n, name in seqs.items():
            for p, part in section_paths(results[name]["root"]):  # type: ignore[arg-type]
                if part.is_multipart or part.message is not None:
                    continue
                s = ".".join(map(str, p)).encode()
                try:
                    untagged, done = c.collect(c.send(b"FETCH %d (BINARY.PEEK[%s])" % (n, s)))
                except dv.ImapError:
                    results[name][f"BINARY[{s.decode()}]"] = b"DISCONNECTED"
                    c = server.connect()
                    c.command(b"SELECT INBOX")
                    continue
                for r in untagged:
                    if b" FETCH " in r[:20]:
                        results[name].update(dv.parse_fetch(r)[1])
                if done.split(b" ", 2)[1] != b"OK":
                    results[name][f"BINARY[{s.decode()}]"] = done.split(b" ", 1)[1]
    return results


@pytest.fixture(scope="module")
def dovecot_results() -> dict[str, dict[str, object]]:
    if not dv.available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Dovecot is required in CI but {dv.DOVECOT} is missing")
        pytest.skip(f"Dovecot not installed ({dv.DOVECOT}); apt-get install dovecot-imapd")
    return collect()


def compare(name: str, results: dict[str, dict[str, object]],
            used: set[tuple[str, str, str]] | None = None) -> list[str]:
    """The differences for one message, known ones excluded, as readable strings.

    ``used`` collects the entries of :data:`_KNOWN` that excused a difference.
    """
    got = results[name]
    if got.get("rejected"):
        return []
    stored: bytes = got["stored"]  # type: ignore[assignment]
    # Dovecot 2.3 does not look inside message/global (RFC 6532 §3.5); Pillarbox does
    # by default. Compare like with like; the nesting itself is unit-tested.
    root = parse(stored, global_messages=False)
    diffs: list[str] = []

    def check(item: str, theirs: object, ours: object) -> None:
        if theirs == ours:
            return
        known = known_difference(name, item)
        if known is None:
            diffs.append(f"{name} {item}:\n  dovecot:   {theirs!r}\n  pillarbox: {ours!r}")
        elif used is not None:
            used.add(known)

    check("ENVELOPE", got["ENVELOPE"], envelope(root))
    check("BODYSTRUCTURE", got["BODYSTRUCTURE"], bodystructure(root))
    check("BODY", got["BODY"], bodystructure(root, extended=False))
    for path, part in section_paths(root):
        p = ".".join(map(str, path))
        check(f"BODY[{p}]", literal_value(got.get(f"BODY[{p}]", b"NIL")), fetch_section(root, p))
        check(f"BODY[{p}.MIME]", literal_value(got.get(f"BODY[{p}.MIME]", b"NIL")),
              fetch_section(root, p + ".MIME"))
        if not part.is_multipart and part.message is None and f"BINARY[{p}]" in got:
            theirs = got[f"BINARY[{p}]"]
            if theirs == b"DISCONNECTED" or theirs.startswith(b"NO"):
                # Dovecot refuses to decode (RFC 3516 §4.2 allows UNKNOWN-CTE); we decode
                # leniently, which is what a client asking for BINARY wants.
                continue
            value = literal_value(theirs)
            if value is not None and b"\0" in CORPUS[name] and part.transfer_encoding in (
                    "7bit", "8bit", "binary"):
                # Dovecot serves NUL as 0x80 in BODY[] (our input) but raw in BINARY[];
                # NULs that base64 or quoted-printable decode to are real on both sides
                value = value.replace(b"\0", b"\x80")
            check(f"BINARY[{p}]", value, fetch_binary(root, path))
    return diffs


def test_corpus_size() -> None:
    assert len(CORPUS) >= 150


def test_known_differences_are_real(dovecot_results: dict[str, dict[str, object]]) -> None:
    """Every accepted difference still occurs: a stale entry would hide a regression."""
    used: set[tuple[str, str, str]] = set()
    for name in CORPUS:
        compare(name, dovecot_results, used)
    assert [e for e in _KNOWN if e not in used] == []
    assert {e[2] for e in _KNOWN} == set(KINDS)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_matches_dovecot(name: str, dovecot_results: dict[str, dict[str, object]]) -> None:
    diffs = compare(name, dovecot_results)
    assert not diffs, "\n".join(diffs)


if __name__ == "__main__":  # python -m tests.mime.test_dovecot: print all differences
    res = collect()
    real = set(corpus_mod.data_corpus())
    counts = {"all": [0, 0, 0], "real-world": [0, 0, 0]}  # messages, identical, unexplained
    for n in sorted(CORPUS):
        excused: set[tuple[str, str, str]] = set()
        found = compare(n, res, excused)
        for group in ("all", "real-world") if n in real else ("all",):
            counts[group][0] += 1
            counts[group][1] += not found and not excused and not res[n].get("rejected")
            counts[group][2] += bool(found)
        for d in found:
            print(d)
    print("rejected:", [n for n, r in res.items() if r.get("rejected")])
    for group, (total, exact, unexplained) in counts.items():
        print(f"{group}: {total} messages, {exact} byte-identical in every item, "
              f"{unexplained} with unexplained differences")
