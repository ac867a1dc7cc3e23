"""The Public Suffix List: the list's own test vectors, IDNA, sections, loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pillarbox.policy.psl import PSLError, PublicSuffixList, default_list, organizational_domain

# publicsuffix.org's tests/test_psl.txt: checkPublicSuffix(domain, registrable domain).
# The vectors are for the whole list (ICANN and PRIVATE sections).
VECTORS: list[tuple[str | None, str | None]] = [
    # null input
    (None, None),
    # mixed case
    ("COM", None),
    ("example.COM", "example.com"),
    ("WwW.example.COM", "example.com"),
    # leading dot
    (".com", None),
    (".example", None),
    (".example.com", None),
    (".example.example", None),
    # unlisted TLD
    ("example", None),
    ("example.example", "example.example"),
    ("b.example.example", "example.example"),
    ("a.b.example.example", "example.example"),
    # TLD with only 1 rule
    ("biz", None),
    ("domain.biz", "domain.biz"),
    ("b.domain.biz", "domain.biz"),
    ("a.b.domain.biz", "domain.biz"),
    # TLD with some 2-level rules
    ("com", None),
    ("example.com", "example.com"),
    ("b.example.com", "example.com"),
    ("a.b.example.com", "example.com"),
    ("uk.com", None),
    ("example.uk.com", "example.uk.com"),
    ("b.example.uk.com", "example.uk.com"),
    ("a.b.example.uk.com", "example.uk.com"),
    ("test.ac", "test.ac"),
    # TLD with only 1 (wildcard) rule
    ("mm", None),
    ("c.mm", None),
    ("b.c.mm", "b.c.mm"),
    ("a.b.c.mm", "b.c.mm"),
    # more complex TLD
    ("jp", None),
    ("test.jp", "test.jp"),
    ("www.test.jp", "test.jp"),
    ("ac.jp", None),
    ("test.ac.jp", "test.ac.jp"),
    ("www.test.ac.jp", "test.ac.jp"),
    ("kyoto.jp", None),
    ("test.kyoto.jp", "test.kyoto.jp"),
    ("ide.kyoto.jp", None),
    ("b.ide.kyoto.jp", "b.ide.kyoto.jp"),
    ("a.b.ide.kyoto.jp", "b.ide.kyoto.jp"),
    ("c.kobe.jp", None),
    ("b.c.kobe.jp", "b.c.kobe.jp"),
    ("a.b.c.kobe.jp", "b.c.kobe.jp"),
    ("city.kobe.jp", "city.kobe.jp"),
    ("www.city.kobe.jp", "city.kobe.jp"),
    # TLD with a wildcard rule and exceptions
    ("ck", None),
    ("test.ck", None),
    ("b.test.ck", "b.test.ck"),
    ("a.b.test.ck", "b.test.ck"),
    ("www.ck", "www.ck"),
    ("www.www.ck", "www.ck"),
    # US K12
    ("us", None),
    ("test.us", "test.us"),
    ("www.test.us", "test.us"),
    ("ak.us", None),
    ("test.ak.us", "test.ak.us"),
    ("www.test.ak.us", "test.ak.us"),
    ("k12.ak.us", None),
    ("test.k12.ak.us", "test.k12.ak.us"),
    ("www.test.k12.ak.us", "test.k12.ak.us"),
    # IDN labels
    ("食狮.com.cn", "食狮.com.cn"),
    ("食狮.公司.cn", "食狮.公司.cn"),
    ("www.食狮.公司.cn", "食狮.公司.cn"),
    ("shishi.公司.cn", "shishi.公司.cn"),
    ("公司.cn", None),
    ("食狮.中国", "食狮.中国"),
    ("www.食狮.中国", "食狮.中国"),
    ("shishi.中国", "shishi.中国"),
    ("中国", None),
    # same as above, but punycoded
    ("xn--85x722f.com.cn", "xn--85x722f.com.cn"),
    ("xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("www.xn--85x722f.xn--55qx5d.cn", "xn--85x722f.xn--55qx5d.cn"),
    ("shishi.xn--55qx5d.cn", "shishi.xn--55qx5d.cn"),
    ("xn--55qx5d.cn", None),
    ("xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
    ("www.xn--85x722f.xn--fiqs8s", "xn--85x722f.xn--fiqs8s"),
    ("shishi.xn--fiqs8s", "shishi.xn--fiqs8s"),
    ("xn--fiqs8s", None),
]


@pytest.fixture(scope="module")
def psl() -> PublicSuffixList:
    return default_list()


@pytest.mark.parametrize("name, expected", VECTORS)
def test_psl_vectors(psl: PublicSuffixList, name: str | None, expected: str | None) -> None:
    got = None if name is None else psl.registrable_domain(name, private=True)
    assert got == expected


def test_shipped_list_is_complete(psl: PublicSuffixList) -> None:
    assert len(psl) > 9000
    assert psl.source.endswith("public_suffix_list.dat")


def test_icann_section_only_by_default(psl: PublicSuffixList) -> None:
    # uk.com and github.io are in the PRIVATE section
    assert psl.registrable_domain("example.uk.com") == "uk.com"
    assert psl.registrable_domain("example.uk.com", private=True) == "example.uk.com"
    assert psl.organizational_domain("alice.github.io") == "github.io"
    assert psl.organizational_domain("alice.github.io", private=True) == "alice.github.io"
    # a PRIVATE wildcard is off too by default
    host = "ec2-1-2-3-4.compute-1.amazonaws.com"
    assert psl.organizational_domain(host) == "amazonaws.com"
    assert psl.organizational_domain(host, private=True) == host


def test_public_suffix_and_is_public_suffix(psl: PublicSuffixList) -> None:
    assert psl.public_suffix("www.example.co.uk") == "co.uk"
    assert psl.public_suffix("a.b.c.kobe.jp") == "c.kobe.jp"
    assert psl.public_suffix("www.city.kobe.jp") == "kobe.jp"
    assert psl.public_suffix("example.unlistedtld") == "unlistedtld"
    assert psl.is_public_suffix("co.uk") and psl.is_public_suffix("com")
    assert not psl.is_public_suffix("example.co.uk")
    assert psl.public_suffix("") is None and psl.public_suffix("a..b") is None


def test_organizational_domain(psl: PublicSuffixList) -> None:
    assert psl.organizational_domain("mail.News.Example.CO.UK") == "example.co.uk"
    assert psl.organizational_domain("example.com.") == "example.com"      # the root's dot
    assert psl.organizational_domain("com") == "com"      # a public suffix is its own
    assert organizational_domain("a.b.example.org") == "example.org"
    # U-labels and A-labels find the same rule, and the answer keeps its form
    assert organizational_domain("www.食狮.公司.cn") == "食狮.公司.cn"
    assert organizational_domain("WWW.XN--85X722F.XN--55QX5D.CN") == "xn--85x722f.xn--55qx5d.cn"
    # the ideographic full stop separates labels as the full stop does (UTS #46)
    assert organizational_domain("www。食狮。公司。cn") == "食狮.公司.cn"
    with pytest.raises(ValueError, match="not a domain name"):
        psl.organizational_domain(".example.com")


def test_rules_and_sections_from_text() -> None:
    text = """// comment
example
*.wild.example
!keep.wild.example
// ===BEGIN PRIVATE DOMAINS===
hosting.example   and everything after whitespace is ignored
// ===END PRIVATE DOMAINS===
"""
    psl = PublicSuffixList.parse(text, "test")
    assert len(psl) == 4
    assert psl.registrable_domain("a.b.wild.example") == "a.b.wild.example"
    assert psl.registrable_domain("x.keep.wild.example") == "keep.wild.example"
    assert psl.registrable_domain("me.hosting.example") == "hosting.example"
    assert psl.registrable_domain("me.hosting.example", private=True) == "me.hosting.example"
    # a wildcard does not match its own parent
    assert psl.registrable_domain("wild.example") == "wild.example"


def test_a_rule_in_both_sections_counts_as_icann() -> None:
    text = "// ===BEGIN PRIVATE DOMAINS===\nshared.example\n// ===END PRIVATE DOMAINS===\nshared.example\n"
    psl = PublicSuffixList.parse(text)
    assert psl.public_suffix("a.shared.example") == "shared.example"


@pytest.mark.parametrize("line, why", [
    ("a..b", "empty label"),
    ("foo.*.bar", "wildcard"),
    ("*foo.bar", "wildcard"),
    ("!*.foo", "exception rule cannot be a wildcard"),
    ("!foo", "two labels"),
    ("fo!o.bar", "'!'"),
])
def test_bad_rules_name_file_and_line(line: str, why: str) -> None:
    with pytest.raises(PSLError, match=rf"my\.dat, line 2: .*{why}"):
        PublicSuffixList.parse(f"com\n{line}\n", "my.dat")


def test_load_from_a_configured_path(tmp_path: Path) -> None:
    path = tmp_path / "psl.dat"
    path.write_text("// ===BEGIN ICANN DOMAINS===\ntest\nco.test\n", encoding="utf-8")
    psl = PublicSuffixList.load(path)
    assert psl.source == str(path)
    assert psl.organizational_domain("a.b.example.co.test") == "example.co.test"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.dat"
    with pytest.raises(PSLError, match=r"nope\.dat cannot be read: No such file"):
        PublicSuffixList.load(missing)
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"com\n\xff\xfe\x00junk")
    with pytest.raises(PSLError, match=r"bin\.dat is not UTF-8"):
        PublicSuffixList.load(binary)
    empty = tmp_path / "empty.dat"
    empty.write_text("// nothing but comments\n\n")
    with pytest.raises(PSLError, match=r"empty\.dat: no rules"):
        PublicSuffixList.load(empty)
    with pytest.raises(PSLError, match="cannot be read"):
        PublicSuffixList.load(tmp_path)        # a directory


def test_long_and_odd_names(psl: PublicSuffixList) -> None:
    assert psl.registrable_domain("a." * 120 + "example.com") == "example.com"
    assert psl.registrable_domain("x" * 2000 + ".com") is None
    # a label IDNA refuses matches no rule but does not crash
    assert psl.registrable_domain("www.\u0378bad.com") == "\u0378bad.com"


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LABELS = ["com", "uk", "co", "jp", "kobe", "city", "ck", "www", "公司", "cn", "xn--55qx5d",
          "食狮", "", "ÄÖ", "\u0378", "-", "*", "!", "..", "。", "a" * 70]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(LABELS), st.text(max_size=6)), max_size=8).map(".".join))
def test_any_name_gets_an_answer(name: str) -> None:
    psl = default_list()
    reg = psl.registrable_domain(name, private=True)
    suffix = psl.public_suffix(name)
    if reg is not None:
        assert suffix is not None and name.lower().rstrip(".").translate(
            str.maketrans("。", ".")).endswith(reg)


def test_every_rule_of_the_shipped_list_matches_itself(psl: PublicSuffixList) -> None:
    text = (Path(__file__).resolve().parents[2] / "src/pillarbox/policy/data/public_suffix_list.dat"
            ).read_text(encoding="utf-8")
    rules = [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("//")]
    exceptions = {r[1:] for r in rules if r.startswith("!")}
    checked = 0
    for rule in rules:
        if rule.startswith("!"):
            # an exception is a registrable domain: its parent is the public suffix
            assert psl.registrable_domain(rule[1:], private=True) == rule[1:], rule
        elif rule.startswith("*."):
            name = "zz-probe." + rule[2:]
            assert psl.is_public_suffix(name, private=True), rule
        elif rule not in exceptions:
            assert psl.is_public_suffix(rule, private=True), rule
            assert psl.registrable_domain("probe." + rule, private=True) == "probe." + rule, rule
        checked += 1
    assert checked == len(psl)
