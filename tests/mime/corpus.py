"""Messages for the MIME tests: hand-written ones and a seeded generator.

:func:`generate_message` builds a random message from a ``random.Random``:
nested multiparts, message/rfc822, every transfer encoding, several charsets,
encoded words, RFC 2231 parameters and, with ``malformed=True``, broken
variants. The hypothesis strategies in ``strategies.py`` drive the same
generator, so a failing example there can be replayed here.
"""

from __future__ import annotations

import base64
import quopri
import random
from pathlib import Path

CRLF = b"\r\n"


def msg(*lines: str | bytes) -> bytes:
    return CRLF.join(x.encode("utf-8") if isinstance(x, str) else x for x in lines)


HANDWRITTEN: dict[str, bytes] = {
    "simple": msg("From: Alice <alice@example.com>", "To: bob@example.org",
                  "Subject: Hello", "Date: Tue, 1 Jul 2003 10:52:37 +0200",
                  "Message-ID: <1234@example.com>", "", "Hi Bob.", ""),
    "no-headers": msg("", "just a body", ""),
    "no-body": msg("Subject: nothing follows", ""),
    "no-blank-line": b"Subject: x\r\nFrom: a@b",
    "empty": b"",
    "encoded-subject": msg("Subject: =?utf-8?q?caf=C3=A9?= =?ISO-8859-1?B?5OQ=?=",
                           "From: =?utf-8?b?SsO2cmc=?= <j@example.com>", "", "x", ""),
    "utf8-headers": msg("Subject: Grüße aus Köln", "From: Jörg <jörg@bücher.example>",
                        "To: 山田 <yamada@example.jp>", "MIME-Version: 1.0",
                        "Content-Type: text/plain; charset=utf-8",
                        "Content-Transfer-Encoding: 8bit", "", "Grüße", ""),
    "groups": msg("From: a@example.com",
                  "To: undisclosed-recipients:;",
                  "Cc: A Group: Ed Jones <c@a.test>, joe@where.test, John <jdoe@one.test>;, x@y.z",
                  "", "b", ""),
    "obsolete-addresses": msg("From: Joe Q. Public <john.q.public@example.com>",
                              "To: Mary Smith <@node.test:mary@example.net>, , jdoe@test . example",
                              "Cc: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>",
                              "Reply-To: \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>",
                              "Date: Thu,", "      13", "        Feb", "          1969",
                              "      23:32", "               -0330 (Newfoundland Time)",
                              "", "b", ""),
    "comment-name": msg("From: user@example.com (The User)", "", "b", ""),
    "sender-replyto": msg("From: a@example.com", "Sender: s@example.com",
                          "Reply-To: r@example.com, r2@example.com", "Bcc: hidden@example.com",
                          "In-Reply-To: <a@b>", "Message-Id: <x@y>", "", "b", ""),
    "folded-subject": msg("Subject: a very long", "\tsubject  with   spaces", "", "b", ""),
    "quotes-in-subject": msg('Subject: say "hi" \\ there', "", "b", ""),
    "multipart-basic": msg(
        "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b1"', "",
        "This is the preamble.", "--b1", "Content-Type: text/plain; charset=us-ascii", "",
        "part one", "--b1", "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable", "", "<p>caf=C3=A9</p>", "--b1--",
        "epilogue", ""),
    "multipart-attachment": msg(
        "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=XYZ", "", "--XYZ",
        "Content-Type: text/plain", "", "see attached", "--XYZ",
        'Content-Type: application/pdf; name="report.pdf"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="report.pdf"; size=12',
        "Content-ID: <part1@example.com>", "Content-Description: The report",
        "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==", "Content-Language: en, de-CH",
        "Content-Location: http://example.com/report.pdf", "",
        "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURlY29kZT4+",
        "--XYZ--", ""),
    "rfc2231": msg(
        "MIME-Version: 1.0", "Content-Type: multipart/mixed; boundary=\"=_x\"", "", "--=_x",
        "Content-Type: application/x-stuff;",
        "\ttitle*0*=us-ascii'en'This%20is%20even%20more%20;",
        "\ttitle*1*=%2A%2A%2Afun%2A%2A%2A%20;", "\ttitle*2=\"isn't it!\"",
        "Content-Disposition: attachment; filename*=UTF-8''na%C3%AFve%20file.txt", "", "data",
        "--=_x", "Content-Type: text/plain; name*0=\"long\"; name*1=\"name.txt\"", "", "x",
        "--=_x--", ""),
    "nested": msg(
        "Content-Type: multipart/mixed; boundary=outer", "", "--outer",
        "Content-Type: multipart/alternative; boundary=inner", "", "--inner",
        "Content-Type: text/plain", "", "plain", "--inner", "Content-Type: text/html", "",
        "<b>html</b>", "--inner--", "--outer", "Content-Type: message/rfc822", "",
        "From: x@example.com", "Subject: forwarded", "Content-Type: multipart/mixed; boundary=fw",
        "", "--fw", "", "forwarded text", "--fw", "Content-Type: image/png",
        "Content-Transfer-Encoding: base64", "", "iVBORw0KGgo=", "--fw--", "--outer--", ""),
    "rfc822-simple": msg(
        "Content-Type: multipart/mixed; boundary=o", "", "--o", "Content-Type: message/rfc822",
        "", "Subject: inner", "From: Inner <i@example.com>", "", "inner body", "line 2", "--o--", ""),
    "message-global": msg(
        "Content-Type: multipart/mixed; boundary=o", "", "--o", "Content-Type: message/global",
        "", "Subject: Grüße", "From: Jörg <j@example.com>", "", "Grüße", "--o--", ""),
    "digest": msg(
        "Content-Type: multipart/digest; boundary=d", "", "--d", "", "Subject: one", "", "first",
        "--d", "", "Subject: two", "", "second", "--d", "Content-Type: text/plain", "", "third",
        "--d--", ""),
    "missing-close": msg(
        "Content-Type: multipart/mixed; boundary=b", "", "--b", "Content-Type: text/plain", "",
        "never closed", ""),
    "wrong-boundary": msg(
        "Content-Type: multipart/mixed; boundary=b", "", "--c", "Content-Type: text/plain", "",
        "wrong", "--c--", ""),
    "no-boundary-param": msg("Content-Type: multipart/mixed", "", "--b", "", "x", "--b--", ""),
    "nested-unclosed": msg(
        "Content-Type: multipart/mixed; boundary=outer", "", "--outer",
        "Content-Type: multipart/alternative; boundary=inner", "", "--inner", "", "a",
        "--outer", "Content-Type: text/plain", "", "after", "--outer--", ""),
    "boundary-prefix": msg(
        "Content-Type: multipart/mixed; boundary=abc", "", "--abc",
        "Content-Type: multipart/mixed; boundary=abcd", "", "--abcd", "", "inner", "--abcd--",
        "--abc", "", "second", "--abc--", ""),
    "empty-parts": msg("Content-Type: multipart/mixed; boundary=e", "", "--e", "--e", "",
                       "--e--", ""),
    "multipart-no-parts": msg("Content-Type: multipart/mixed; boundary=e", "", "no parts", ""),
    "part-without-blank": msg("Content-Type: multipart/mixed; boundary=e", "", "--e",
                              "Content-Type: text/plain", "--e--", ""),
    "junk-headers": msg("Subject: x", "this line has no colon", " continuation", "From: a@b",
                        "", "b", ""),
    "bad-content-type": msg("Content-Type: garbage", "", "b", ""),
    "type-case": msg("Content-Type: TEXT/HTML; CHARSET=\"UTF-8\"", "Content-Transfer-Encoding: QUOTED-PRINTABLE",
                     "", "=E2=82=AC", ""),
    "no-mime-version": msg("Content-Type: text/html", "", "<p>x</p>", ""),
    "duplicate-headers": msg("Subject: first", "Subject: second", "From: a@b", "From: c@d",
                             "Content-Type: text/html", "Content-Type: text/xml", "", "b", ""),
    "base64-bad": msg("Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64",
                      "", "SGVsbG8*gd29y!bGQ=", "AAA", ""),
    "qp-soft-breaks": msg("Content-Type: text/plain; charset=iso-8859-1",
                          "Content-Transfer-Encoding: quoted-printable", "",
                          "a line that is soft=", "ly broken =E9t=E9  ", "=3D=", ""),
    "long-header": msg("Subject: " + "word " * 3000, "X-Long: " + "y" * 20000, "", "b", ""),
    "many-parts": msg("Content-Type: multipart/mixed; boundary=m", "",
                      *[x for i in range(60) for x in ("--m", "", f"part {i}")], "--m--", ""),
    "deep-nesting": b"".join(
        b"Content-Type: multipart/mixed; boundary=d%d\r\n\r\n--d%d\r\n" % (i, i) for i in range(40)
    ) + b"\r\ndeep\r\n",
    "encoded-word-malformed": msg("Subject: =?utf-8?q?ok?= =?nope?q?x?= =?utf-8?b?!!!?= =?utf-8?q?",
                                  "", "b", ""),
    "address-encoded": msg("From: =?iso-8859-1?q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
                           "To: \"=?utf-8?q?quoted?=\" <q@example.com>", "", "b", ""),
    "missing-domain": msg("From: localonly", "To: <>, @, a@, @b", "", "b", ""),
    "date-obsolete": msg("Date: 1 jul 03 10:52 EST", "", "b", ""),
    "text-lines": msg("Content-Type: text/plain", "", "one", "two", "", "four"),
    "params-odd": msg('Content-Type: text/plain; charset = "utf-8" ; format=flowed; delsp=yes;',
                      "", "b", ""),
    "disposition-inline": msg("Content-Type: image/jpeg", "Content-Disposition: INLINE",
                              "Content-Transfer-Encoding: base64", "", "/9j/4AAQ", ""),
    "language-mime": msg("MIME-Version: 1.0", "Content-Type: text/plain", "Content-Language: fr",
                         "Content-Location: foo.txt", "", "bonjour", ""),
    "lf-only": b"Subject: lf\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\nbody\n--q--\n",
    "cte-unknown": msg("Content-Type: text/plain", "Content-Transfer-Encoding: x-uuencode", "", "b", ""),
    "html-only": msg("Content-Type: text/html; charset=utf-8", "", "<html><head><style>p{}</style>",
                     "</head><body><p>Hello &amp; <b>welcome</b></p><br>bye</body></html>", ""),
    "related": msg("Content-Type: multipart/related; boundary=r; type=\"text/html\"", "", "--r",
                   "Content-Type: text/html", "", "<img src=cid:i>", "--r",
                   "Content-Type: image/gif", "Content-ID: <i>", "Content-Transfer-Encoding: base64",
                   "", "R0lGODlhAQABAAAAACw=", "--r--", ""),
    "signed": msg("Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=\"s\"",
                  "", "--s", "Content-Type: text/plain", "", "signed text", "--s",
                  "Content-Type: application/pgp-signature", "", "-----BEGIN PGP SIGNATURE-----",
                  "--s--", ""),
    "report": msg("Content-Type: multipart/report; report-type=delivery-status; boundary=rr", "",
                  "--rr", "", "failed", "--rr", "Content-Type: message/delivery-status", "",
                  "Reporting-MTA: dns; mx.example.com", "", "Final-Recipient: rfc822; x@y",
                  "Action: failed", "Status: 5.1.1", "--rr", "Content-Type: text/rfc822-headers",
                  "", "Subject: original", "--rr--", ""),
}

#: One small message for each kind of difference first seen on real-world mail.
REAL_WORLD_KINDS: dict[str, bytes] = {
    "folded-subject-plain": msg("Subject: a subject folded", " once, as long ones are", "", "b", ""),
    "folded-subject-words": msg("Subject: =?utf-8?q?caf=C3=A9?=", " =?iso-8859-1?q?=E0_la_carte?=",
                                "", "b", ""),
    "cte-spelling": msg(
        "Content-Type: multipart/mixed; boundary=c", "", "--c", "Content-Transfer-Encoding: 7BIT", "",
        "seven", "--c", "Content-Transfer-Encoding: Base64", "", "eA==", "--c",
        "Content-Transfer-Encoding: QUOTED-PRINTABLE (as written)", "", "a=3Db", "--c",
        "Content-Transfer-Encoding:  8Bit", "", "eight", "--c--", ""),
    "cte-invalid": msg(
        "Content-Type: multipart/mixed; boundary=c", "", "--c", "Content-Transfer-Encoding: base 64", "",
        "eA==", "--c", "Content-Transfer-Encoding: base64;", "", "eA==", "--c",
        'Content-Transfer-Encoding: "base64"', "", "eA==", "--c", "Content-Transfer-Encoding:", "", "x",
        "--c", "Content-Transfer-Encoding: x-uuencode", "", "x", "--c--", ""),
    "rfc822-headers-only": msg(
        "Content-Type: multipart/report; report-type=delivery-status; boundary=r", "", "--r", "",
        "failed", "--r", "Content-Type: message/rfc822", "", "Subject: the original",
        "From: a@example.com", "--r--", ""),
    "digest-part-headers": msg(
        "Content-Type: multipart/digest; boundary=d", "", "--d", "Subject: one", "From: a@b", "",
        "first", "--d", "Content-Type: garbage", "", "Subject: two", "", "second", "--d--", ""),
    "boundary-too-long": msg(
        "Content-Type: multipart/mixed; boundary=" + "b" * 90, "", "--" + "b" * 90,
        "Content-Type: text/plain", "", "a", "--" + "b" * 90, "", "b", "--" + "b" * 90 + "--", ""),
    "double-semicolon": msg(
        "Content-Type: multipart/mixed;; boundary=s", "", "--s",
        "Content-Type: text/plain; charset=utf-8;; format=flowed", "", "a", "--s--", ""),
    "part-type-unusable": msg(
        "Content-Type: multipart/mixed; boundary=u", "", "--u", "Content-Type: ", "", "a", "--u",
        "Content-Type: text", "", "b", "--u--", ""),
    "subject-line-8k": msg("Subject: " + "y" * 8200, "", "b", ""),
    # an RFC 2231 boundary (CPython's test_email msg_33: mutt wrote every parameter so)
    "rfc2231-boundary": msg(
        "Content-Type: multipart/signed; micalg*=us-ascii''pgp-md5;",
        "\tprotocol*=us-ascii''application%2Fpgp-signature;", "\tboundary*=\"us-ascii''B2\"",
        "", "--B2", "Content-Type: text/plain", "", "signed text", "--B2",
        "Content-Type: application/pgp-signature", "", "sig", "--B2--", ""),
    # sections joined as Dovecot joins them: sorted after the plain parameters, plain
    # sections %-escaped into an extended value, a gap left unjoined
    "rfc2231-sections": msg(
        "Content-Type: multipart/mixed; boundary*0=s1; boundary*1=s2", "", "--s1s2",
        "Content-Type: text/plain; title*1=two; charset=utf-8; title*0*=utf-8''one%20", "",
        "a", "--s1s2", "Content-Type: text/plain; name*0=50%; name*1*=%20x; gap*0=a; gap*2=c",
        "", "b", "--s1s2--", ""),
    # a mailer's second Content-Disposition (enmime's mail/inlinemultipart.raw)
    "disposition-twice": msg(
        "Content-Type: multipart/mixed; boundary=t", "", "--t", "Content-Type: text/plain",
        "Content-Disposition: inline", "Content-Disposition: attachment; filename=t.txt", "",
        "text", "--t--", ""),
    # the last part of a multipart is a header block that runs into an enclosing
    # boundary (CPython's test_email msg_38)
    "multipart-header-at-boundary": msg(
        "Content-Type: multipart/mixed; boundary=o", "", "--o",
        "Content-Type: multipart/mixed; boundary=i", "", "--i", "Content-Type: text/plain", "",
        "hello", "--i", "X-Stray: a header, no blank line", "--o", "Content-Type: text/plain", "",
        "second", "--o--", ""),
    "parameter-no-semicolon": msg(
        "Content-Type: multipart/mixed", "\tboundary=n", "", "--n",
        "Content-Type: message/external-body; access-type=mail-server",
        '  server="listserv@example.net"; expiration="Fri, 14 Jun 1991 19:13:14 -0400"', "",
        "Content-type: text/plain", "", "get it", "--n--", ""),
    "parameter-tspecial": msg(
        "Content-Type: application/octet-stream; name=attach01",
        "Content-Disposition: attachment; filename=attach/01", "", "x", ""),
    "binary-nul-decoded": msg(
        "Content-Type: multipart/mixed; boundary=z", "", "--z",
        "Content-Type: text/plain; charset=utf-16le", "Content-Transfer-Encoding: base64", "",
        "SABpAAoA", "--z--", ""),
    "boundary-longest-match": msg(
        "Content-Type: multipart/mixed; boundary=ab", "", "--ab",
        "Content-Type: multipart/mixed; boundary=a", "", "--ab", "Content-Type: text/plain", "",
        "--a", "", "inner", "--a--", "--ab--", ""),
    "boundary-dashes": msg(
        'Content-Type: multipart/mixed; boundary="a--"', "", "--a--",
        'Content-Type: multipart/mixed; boundary="a----"', "", "--a----", "", "body",
        "--a------", "", "body2", "--a----", ""),
    "address-phrase-only": msg("From: Someone Else", 'To: "Quoted Name", Two Words, x y@z',
                               "Cc: localonly, a@b c", "", "b", ""),
}


# --- the generator -------------------------------------------------------------------

WORDS = ["hello", "world", "café", "Grüße", "naïve", "日本語", "Привет", "mail", "x", "€uro",
         "quote\"d", "semi;colon", "a(b)c", "tab\there"]
CHARSETS = ["utf-8", "iso-8859-1", "iso-8859-15", "windows-1252", "koi8-r", "shift_jis",
            "euc-jp", "iso-2022-jp", "us-ascii", "utf-16", "gb2312", "big5"]
ENCODINGS = ["7bit", "8bit", "quoted-printable", "base64", "binary"]
TYPES = [("application", "octet-stream"), ("image", "png"), ("application", "pdf"),
         ("audio", "ogg"), ("video", "mp4"), ("application", "zip"), ("model", "x-thing")]


def _text(rnd: random.Random, n: int = 6) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, n)))


def _encodable(text: str, charset: str) -> str:
    try:
        text.encode(charset)
        return text
    except UnicodeEncodeError:
        return text.encode(charset, "replace").decode(charset, "replace")


def encoded_word(rnd: random.Random, text: str) -> bytes:
    cs = rnd.choice(["utf-8", "iso-8859-1", "koi8-r", "shift_jis", "UTF-8"])
    data = _encodable(text, cs).encode(cs)
    if rnd.random() < 0.5:
        return b"=?%s?B?%s?=" % (cs.encode(), base64.b64encode(data))
    # RFC 2047 §5 (3): in a phrase only letters, digits and !*+-/ stay literal
    q = b"".join(bytes([c]) if (chr(c).isalnum() and c < 128) or c in b"!*+-/" else
                 b"_" if c == 32 else b"=%02X" % c for c in data)
    return b"=?%s?Q?%s?=" % (cs.encode(), q)


def _phrase(rnd: random.Random) -> bytes:
    t = _text(rnd, 3)
    r = rnd.random()
    if r < 0.3:
        return encoded_word(rnd, t)
    if r < 0.5:
        return b'"' + t.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if r < 0.6 and not any(c in t for c in '"();,\t<>@:.[]\\'):
        return t.encode("utf-8")  # RFC 6532
    return b" ".join(w for w in (rnd.choice([b"John", b"Q.", b"Doe", b"Ann"]) for _ in range(2)))


def _addr(rnd: random.Random) -> bytes:
    local = rnd.choice([b"user", b"first.last", b'"quoted local"', b"x+tag", b"j\xc3\xb6rg"])
    dom = rnd.choice([b"example.com", b"mail.example.org", b"[192.0.2.1]", b"b\xc3\xbccher.example"])
    spec = local + b"@" + dom
    r = rnd.random()
    if r < 0.5:
        return _phrase(rnd) + b" <" + spec + b">"
    if r < 0.6:
        return spec + b" (" + _text(rnd, 2).encode() + b")"
    if r < 0.65:
        return b"Group: " + spec + b", " + _phrase(rnd) + b" <" + spec + b">;"
    return spec


def _address_list(rnd: random.Random) -> bytes:
    return b", ".join(_addr(rnd) for _ in range(rnd.randint(1, 3)))


def _param_value(rnd: random.Random, name: str, value: str) -> bytes:
    r = rnd.random()
    if r < 0.3 and value.isascii():
        return b'; %s="%s"' % (name.encode(), value.encode().replace(b'"', b"'"))
    if r < 0.5:
        from urllib.parse import quote

        enc = quote(value.encode("utf-8"), safe="")
        return b"; %s*=utf-8''%s" % (name.encode(), enc.encode())
    if r < 0.7:
        from urllib.parse import quote

        enc = quote(value.encode("utf-8"), safe="")
        half = len(enc) // 2
        while "%" in enc[max(0, half - 2) : half]:
            half += 1
        return b";\r\n\t%s*0*=utf-8'en'%s;\r\n\t%s*1*=%s" % (
            name.encode(), enc[:half].encode(), name.encode(), enc[half:].encode())
    if r < 0.85:
        return b'; %s="%s"' % (name.encode(), encoded_word(rnd, value))
    return b'; %s="%s"' % (name.encode(), value.encode("utf-8"))


def _leaf(rnd: random.Random) -> tuple[list[bytes], bytes]:
    headers: list[bytes] = []
    if rnd.random() < 0.6:
        cs = rnd.choice(CHARSETS)
        sub = rnd.choice(["plain", "html", "calendar", "x-custom"])
        text = "\r\n".join(_text(rnd, 12) for _ in range(rnd.randint(0, 8))) + rnd.choice(["", "\r\n"])
        if sub == "html":
            text = f"<html><body><p>{text}</p></body></html>"
        data = _encodable(text, cs).encode(cs)
        ct = b"Content-Type: text/%s" % sub.encode()
        if rnd.random() < 0.8:
            ct += b"; charset=%s" % (cs.encode() if rnd.random() < 0.7 else b'"' + cs.upper().encode() + b'"')
        headers.append(ct)
    else:
        typ, sub = rnd.choice(TYPES)
        data = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 300)))
        ct = b"Content-Type: %s/%s" % (typ.encode(), sub.encode())
        if rnd.random() < 0.5:
            ct += _param_value(rnd, "name", _text(rnd, 2) + ".bin")
        headers.append(ct)
        if rnd.random() < 0.7:
            headers.append(b"Content-Disposition: " + rnd.choice([b"attachment", b"inline"])
                           + _param_value(rnd, "filename", _text(rnd, 2) + ".dat"))
    enc = rnd.choice(ENCODINGS)
    if enc == "7bit" and any(b > 127 or b == 0 for b in data):
        enc = "base64"
    if enc in ("8bit", "binary") and (b"\x00" in data or b"\r" in data.replace(b"\r\n", b"")
                                      or b"\n" in data.replace(b"\r\n", b"")):
        enc = "quoted-printable"
    if enc == "base64":
        body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    elif enc == "quoted-printable" and b"\r" not in data.replace(b"\r\n", b""):
        body = quopri.encodestring(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    elif enc == "quoted-printable":  # bare CRs: quopri would leave them raw
        from pillarbox.mime.encodings import encode_qp

        body = encode_qp(data)
    else:
        body = data
    if rnd.random() < 0.8 or enc != "7bit":
        headers.append(b"Content-Transfer-Encoding: " + (enc.upper() if rnd.random() < 0.2 else enc).encode())
    for name, val in ((b"Content-ID", b"<%d@gen.example>" % rnd.randint(1, 10**6)),
                      (b"Content-Description", _text(rnd, 3).encode()),
                      (b"Content-Language", rnd.choice([b"en", b"de-CH, fr"])),
                      (b"Content-Location", b"http://example.com/x"),
                      (b"Content-MD5", b"Q2hlY2sgSW50ZWdyaXR5IQ==")):
        if rnd.random() < 0.15:
            headers.append(name + b": " + val)
    return headers, body


def _entity(rnd: random.Random, depth: int) -> tuple[list[bytes], bytes]:
    r = rnd.random()
    if depth < 3 and r < 0.35:
        boundary = rnd.choice([b"b", b"==_Part_%d" % rnd.randint(0, 99), b"----=_NextPart_00%d" % depth,
                               b"with space %d" % depth, b"x" * 60 + b"%d" % depth])
        sub = rnd.choice([b"mixed", b"alternative", b"related", b"digest", b"parallel", b"x-weird"])
        headers = [b'Content-Type: multipart/%s; boundary="%s"' % (sub, boundary)]
        chunks = [b"preamble\r\n" if rnd.random() < 0.5 else b""]
        for _ in range(rnd.randint(1, 4)):
            h, b = _entity(rnd, depth + 1)
            chunks.append(b"--" + boundary + b"\r\n" + b"\r\n".join(h) + b"\r\n\r\n" + b + b"\r\n")
        chunks.append(b"--" + boundary + b"--\r\n")
        if rnd.random() < 0.3:
            chunks.append(b"epilogue\r\n")
        return headers, b"".join(chunks)
    if depth < 3 and r < 0.45:
        inner = generate_message(rnd, depth + 1)
        return [rnd.choice([b"Content-Type: message/rfc822", b"Content-Type: message/global"])], inner
    return _leaf(rnd)


def generate_message(rnd: random.Random, depth: int = 0, malformed: bool = False) -> bytes:
    """A random message; ``malformed`` applies one of several kinds of damage."""
    headers: list[bytes] = []
    if rnd.random() < 0.9:
        headers.append(b"From: " + _address_list(rnd))
    if rnd.random() < 0.8:
        headers.append(b"To: " + _address_list(rnd))
    if rnd.random() < 0.3:
        headers.append(b"Cc: " + _address_list(rnd))
    if rnd.random() < 0.9:
        s = _text(rnd, 8)
        r = rnd.random()
        subj = (encoded_word(rnd, s) + b" " + encoded_word(rnd, _text(rnd)) if r < 0.4
                else s.encode("utf-8") if r < 0.6 else s.encode("ascii", "replace"))
        headers.append(b"Subject: " + subj)
    if rnd.random() < 0.8:
        headers.append(b"Date: " + rnd.choice([b"Tue, 1 Jul 2003 10:52:37 +0200",
                                                b"1 Jan 99 00:00 GMT", b"Mon, 31 Dec 2029 23:59:59 -0800"]))
    if rnd.random() < 0.7:
        headers.append(b"Message-ID: <%d.gen@example.com>" % rnd.randint(1, 10**9))
    if rnd.random() < 0.8:
        headers.append(b"MIME-Version: 1.0")
    h, body = _entity(rnd, depth)
    message = b"\r\n".join(headers + h) + b"\r\n\r\n" + body
    if malformed:
        message = damage(rnd, message)
    return message


def damage(rnd: random.Random, m: bytes) -> bytes:
    kind = rnd.randrange(9)
    if kind == 0:  # lose a close delimiter
        i = m.rfind(b"--\r\n")
        return m[:i] + m[i + 2 :] if i > 0 else m
    if kind == 1:  # truncate
        return m[: rnd.randint(0, len(m))]
    if kind == 2:  # NUL octets
        i = rnd.randint(0, len(m))
        return m[:i] + b"\x00" + m[i:]
    if kind == 3:  # bare LF line ends in the body
        i = m.find(b"\r\n\r\n")
        return m[:i] + m[i:].replace(b"\r\n", b"\n", rnd.randint(1, 5))
    if kind == 4:  # header line without a colon
        return b"junk without colon\r\n" + m
    if kind == 5:  # remove the blank line after the top header
        return m.replace(b"\r\n\r\n", b"\r\n", 1)
    if kind == 6:  # a huge header
        return b"X-Huge: " + b"a" * rnd.randint(1000, 100_000) + b"\r\n" + m
    if kind == 7:  # damage a boundary
        i = m.find(b"\r\n--")
        return m[: i + 4] + b"X" + m[i + 4 :] if i >= 0 else m
    return m.replace(b"\r\n", b"\r", 1)  # a bare CR


def generated_corpus(count: int = 130, seed: int = 3) -> dict[str, bytes]:
    out = {}
    for i in range(count):
        rnd = random.Random(seed * 100_003 + i)
        out[f"gen{i:03d}"] = generate_message(rnd, malformed=i % 4 == 3)
    return out


def corpus() -> dict[str, bytes]:
    """The hand-written and the generated messages."""
    return {**HANDWRITTEN, **generated_corpus()}


DATA = Path(__file__).parent / "data"


def data_corpus() -> dict[str, bytes]:
    """The real-world messages under ``data/<source>/``, named ``<source>/<file>``.

    Every file in a source's folder but its README.md and LICENSE is a message,
    stored as its source published it (line ends included).
    """
    out: dict[str, bytes] = {}
    for path in sorted(DATA.glob("*/*")):
        if path.is_file() and path.name not in ("README.md", "LICENSE") \
                and not path.name.startswith("."):
            out[path.relative_to(DATA).as_posix()] = path.read_bytes()
    return out


def differential_corpus() -> dict[str, bytes]:
    """Everything the Dovecot comparison runs on."""
    return {**corpus(), **REAL_WORLD_KINDS, **data_corpus()}
