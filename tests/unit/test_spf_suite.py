"""The official SPF test suites (openspf.org, release 2014.04) through check_host().

Every test case of every scenario of ``rfc7208-tests.yml`` is one test, and
so is every case of ``rfc4408-tests.yml`` (a second pass: where RFC 7208
changed an expectation, the 4408 file lists both results as acceptable, so
none of its cases contradicts 7208 and all of them run).  Every case passes;
a case that did not would be listed in ``KNOWN_FAILURES`` with its reason
(a strict xfail), and there is none.

The suite's conventions, as its own driver (pyspf's ``testspf.py``) reads
them:

- ``zonedata`` names a list of records per name; a ``SPF`` record stands for
  a TXT record too unless the name has a TXT entry; ``TXT: NONE`` means the
  name exists without that record; a list value is one record of several
  strings; ``MX: [preference, host]``.
- ``TIMEOUT``: the record types listed (other than ``NONE``) before it
  answer, every other type times out (a DNS error).
- a test's ``result`` is one result or a list of acceptable ones;
  ``explanation``, when given, must match (``DEFAULT``: the domain gave none,
  so the receiver's default is used, which is ``""`` in an SPFResult).
- ``mailfrom`` empty: the HELO identity is checked (RFC 7208 §2.3).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from pillarbox.policy.dns import RDTYPES, StaticResolver
from pillarbox.policy.spf import check_mail_from

# ../shared/testdata/spf beside the checkout (issue 8).
SUITES = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "spf"

# (suite file, case) → why this implementation does not pass it (a strict xfail).
# Empty: every case of both suites passes.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _zone(zonedata: dict[str, list[Any]]) -> StaticResolver:
    """A StaticResolver holding a scenario's zonedata, by the suite's conventions."""
    resolver = StaticResolver()
    for name, entries in zonedata.items():
        resolver.add(name, "TXT")  # the name exists, with or without records
        txt_given = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answered: set[str] = set()
        mx: list[tuple[int, str]] = []
        for entry in entries:
            if entry == "TIMEOUT":
                resolver.failing.update((name.lower(), t) for t in RDTYPES if t not in answered)
                break
            for rdtype, value in entry.items():
                if value == "NONE":
                    continue
                answered.add(rdtype)
                if rdtype in ("TXT", "SPF"):
                    text = "".join(value) if isinstance(value, list) else str(value)
                    if rdtype == "TXT" or not txt_given:
                        resolver.add(name, "TXT", text)
                elif rdtype == "MX":
                    mx.append((int(value[0]), str(value[1])))
                else:
                    resolver.add(name, rdtype, str(value))
        if mx:  # in preference order, as a resolver gives them
            resolver.add(name, "MX", *(host for _, host in sorted(mx, key=lambda r: r[0])))
    return resolver


def _cases(filename: str) -> list[Any]:
    if not (SUITES / filename).is_file():
        raise FileNotFoundError(f"the SPF test suite {SUITES / filename} is missing "
                                "(it belongs in ../shared/testdata/spf/)")
    params = []
    for scenario in yaml.safe_load_all((SUITES / filename).read_text(encoding="utf-8")):
        for test_id, case in scenario["tests"].items():
            marks = []
            known = KNOWN_FAILURES.get((filename, test_id))
            if known:
                marks.append(pytest.mark.xfail(reason=known, strict=True))
            params.append(pytest.param(scenario, case, id=f"{filename[:7]}-{test_id}",
                                       marks=marks))
    return params


def _run(scenario: dict[str, Any], case: dict[str, Any]) -> None:
    resolver = _zone(scenario.get("zonedata") or {})
    spf = asyncio.run(check_mail_from(case["host"], case["mailfrom"], case["helo"], resolver))
    wanted = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert spf.result.value in wanted, f"{spf} {spf.reason}; wanted {wanted}"
    if "explanation" in case:
        explanation = "" if case["explanation"] == "DEFAULT" else case["explanation"]
        assert spf.explanation == explanation


@pytest.mark.parametrize(("scenario", "case"), _cases("rfc7208-tests.yml"))
def test_rfc7208(scenario: dict[str, Any], case: dict[str, Any]) -> None:
    _run(scenario, case)


@pytest.mark.parametrize(("scenario", "case"), _cases("rfc4408-tests.yml"))
def test_rfc4408(scenario: dict[str, Any], case: dict[str, Any]) -> None:
    _run(scenario, case)
