"""SMTP TLS Reporting (RFC 8460): what our outbound TLS met, per policy domain and day.

:class:`TLSRecorder` is told by remote delivery (``deliver/remote.py``) of
every new SMTP session to a destination domain: a success (the session
reached MAIL with the TLS its policy asks for) or a failure (TLS could not
be negotiated or authenticated, so the host was given up).  The policy is
the one that applied to that MX host (§4.4 "policy-type"):

- ``tlsa``: DANE (RFC 7672) decided for the host; the policy strings are
  its usable TLSA records;
- ``sts``: an MTA-STS policy (RFC 8461), ``enforce`` or ``testing``; the
  strings are the policy's lines, ``mx-host`` its patterns;
- ``no-policy-found``: neither; plaintext sessions to such a domain are
  failures of type ``starttls-not-supported`` when the host did not offer
  STARTTLS (the domain asked for reports about its TLS, and that is what
  it lacks).

Domains with a TLS policy of the operator's configuration, and the relay
host, are not reported: those sessions follow our choice, not a policy
the recipient domain published.

:func:`result_type` names a failure with the result types of §4.3
(``starttls-not-supported``, ``certificate-host-mismatch``,
``certificate-expired``, ``certificate-not-trusted``, ``validation-failure``,
``tlsa-invalid``, ``dnssec-invalid``), from the reply remote delivery
words for it.  :class:`TLSReport` renders the JSON of §4.4, and
:func:`parse_record` reads the ``_smtp._tls`` TXT record (§3).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillarbox.policy.dns import DNSTemporaryError, Resolver
from pillarbox.reports.spool import ReportSpool

__all__ = ["PolicyInfo", "TLSRecorder", "TLSReport", "lookup_rua", "parse_record",
           "result_type"]

KIND = "tlsrpt"

log = logging.getLogger("pillarbox.reports")


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """The policy that applied to one MX host (RFC 8460 §4.4 "policy")."""

    type: str                        # sts, tlsa, no-policy-found
    strings: tuple[str, ...] = ()
    mx: tuple[str, ...] = ()

    @classmethod
    def of(cls, host: str, sts: Any = None, dane: Any = None) -> PolicyInfo:
        """From remote delivery's ``CachedPolicy`` and ``DANEPolicy`` (either may be None)."""
        if dane is not None and getattr(dane, "applies", False):
            return cls("tlsa", tuple(str(r) for r in getattr(dane, "records", ())), (host,))
        if sts is not None:
            policy = sts.policy
            lines = tuple(x for x in str(policy).split("\r\n") if x)
            return cls("sts", lines, tuple(policy.mx))
        return cls("no-policy-found")


def result_type(reply: str) -> str:
    """The §4.3 result type of a failed session, from remote delivery's reply text."""
    text = reply.lower()
    if "hostname mismatch" in text or "doesn't match" in text:
        return "certificate-host-mismatch"
    if "certificate has expired" in text or "certificate expired" in text:
        return "certificate-expired"
    if any(s in text for s in ("self-signed", "self signed", "local issuer", "unknown ca",
                               "unable to get issuer")):
        return "certificate-not-trusted"
    if "did not offer" in text or "starttls refused" in text:
        return "starttls-not-supported"
    if "tlsa" in text and ("no tlsa record" in text or "matches" in text or "match" in text):
        return "tlsa-invalid"
    if "dnssec" in text or "bogus" in text or "servfail" in text:
        return "dnssec-invalid"
    return "validation-failure"


class TLSRecorder:
    """Counts outbound TLS sessions for the reports (called by ``deliver/remote.py``)."""

    def __init__(self, spool: ReportSpool) -> None:
        self.spool = spool

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> TLSRecorder:
        """Counting into ``<data_dir>/reports/tlsrpt/`` (``pillarbox.reports.spool``)."""
        return cls(ReportSpool(data_dir, KIND))

    def session(self, domain: str, host: str, address: str, *, tls: bool,
                verified: bool = True, sts: Any = None, dane: Any = None,
                when: float | None = None) -> None:
        """A session reached MAIL: with TLS a success; without, a failure where it counts.

        Under an MTA-STS policy only a verified session is a success: in mode
        ``testing`` an unverified one follows a handshake that failed the
        policy, and that failure was counted already (:meth:`failure`).
        """
        try:
            policy = PolicyInfo.of(host, sts, dane)
            if tls and policy.type == "sts" and not verified:
                return
            if tls:
                self.spool.add(_row(domain, policy, None, host, address, ""), when=when)
            elif policy.type == "no-policy-found":
                self.spool.add(_row(domain, policy, "starttls-not-supported", host, address,
                                    "the session went without TLS"),
                               when=when)
        except Exception:  # noqa: BLE001 - a bug in counting must never stop delivery
            log.exception("recording a TLS session for the reports failed")

    def failure(self, domain: str, host: str, address: str, reply: str, *, sts: Any = None,
                dane: Any = None, when: float | None = None) -> None:
        """TLS failed on ``host``/``address``; ``reply`` is the reason as remote delivery gives it."""
        try:
            policy = PolicyInfo.of(host, sts, dane)
            self.spool.add(_row(domain, policy, result_type(reply), host, address,
                                reply[:300]), when=when)
        except Exception:  # noqa: BLE001 - a bug in counting must never stop delivery
            log.exception("recording a TLS failure for the reports failed")

    def flush(self) -> None:
        self.spool.flush()


def _row(domain: str, policy: PolicyInfo, result: str | None, host: str, address: str,
         info: str) -> dict[str, Any]:
    row: dict[str, Any] = {"domain": domain.lower().rstrip("."), "type": policy.type,
                           "strings": list(policy.strings), "mx": list(policy.mx)}
    if result is not None:
        row.update(result=result, host=host, ip=address, info=info)
    return row


# -- the report (RFC 8460 §4.4) ---------------------------------------------------------

def _stamp(when: int) -> str:
    """RFC 3339 date-time in UTC, as §4.4 asks for the date range."""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TLSReport:
    """One report: one policy domain, one day, every policy that applied to it."""

    org_name: str
    contact: str
    report_id: str
    begin: int
    end: int
    domain: str
    rows: Sequence[tuple[dict[str, Any], int]]

    def policies(self) -> list[dict[str, Any]]:
        by_policy: dict[tuple[str, tuple[str, ...], tuple[str, ...]],
                        tuple[list[int], dict[tuple[str, str, str, str], int]]] = {}
        for row, n in self.rows:
            key = (str(row.get("type", "no-policy-found")), tuple(row.get("strings", ())),
                   tuple(row.get("mx", ())))
            counts, failures = by_policy.setdefault(key, ([0, 0], {}))
            if row.get("result") is None:
                counts[0] += n
            else:
                counts[1] += n
                fkey = (str(row["result"]), str(row.get("host", "")), str(row.get("ip", "")),
                        str(row.get("info", "")))
                failures[fkey] = failures.get(fkey, 0) + n
        out = []
        for (kind, strings, mx), (counts, failures) in sorted(by_policy.items()):
            policy: dict[str, Any] = {"policy-type": kind, "policy-domain": self.domain}
            if strings:
                policy["policy-string"] = list(strings)
            if mx:
                policy["mx-host"] = list(mx)
            item: dict[str, Any] = {
                "policy": policy,
                "summary": {"total-successful-session-count": counts[0],
                            "total-failure-session-count": counts[1]},
            }
            if failures:
                item["failure-details"] = [
                    {"result-type": r, "receiving-mx-hostname": h, "receiving-ip": ip,
                     "failed-session-count": n, "additional-information": info}
                    for (r, h, ip, info), n in sorted(failures.items())]
            out.append(item)
        return out

    def json(self) -> bytes:
        doc = {
            "organization-name": self.org_name,
            "date-range": {"start-datetime": _stamp(self.begin),
                           "end-datetime": _stamp(self.end)},
            "contact-info": self.contact,
            "report-id": self.report_id,
            "policies": self.policies(),
        }
        return json.dumps(doc, indent=2).encode("utf-8") + b"\n"

    def filename(self, submitter: str, unique: str) -> str:
        """``submitter!policy-domain!begin!end!unique-id.json.gz`` (RFC 8460 §5.1)."""
        return f"{submitter}!{self.domain}!{self.begin}!{self.end}!{unique}.json.gz"


def group(rows: Iterable[tuple[dict[str, Any], int]]) -> dict[str, list[tuple[dict[str, Any], int]]]:
    out: dict[str, list[tuple[dict[str, Any], int]]] = {}
    for row, n in rows:
        domain = str(row.get("domain", ""))
        if domain:
            out.setdefault(domain, []).append((row, n))
    return out


# -- where it goes (RFC 8460 §3) ----------------------------------------------------------

def parse_record(text: str) -> list[str]:
    """The ``rua`` URIs of a TLSRPT record; ValueError (the publisher's fault) if it has none."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=TLSRPTv1":
        raise ValueError(f"not a TLSRPT record (it must start with v=TLSRPTv1): {text[:80]!r}")
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if eq and name.strip().lower() == "rua":
            uris = [u.strip() for u in value.split(",") if u.strip()]
            if uris:
                return uris
    raise ValueError(f"the TLSRPT record has no rua=: {text[:80]!r}")


async def lookup_rua(domain: str, resolver: Resolver) -> tuple[list[str], str | None]:
    """The rua URIs at ``_smtp._tls.<domain>``, or [] and why none (§3: exactly one record)."""
    name = f"_smtp._tls.{domain}"
    try:
        answer = await resolver.query(name, "TXT")
    except DNSTemporaryError as exc:
        return [], f"{name}: {exc}"
    records = [r for r in answer.records if r.replace(" ", "").startswith("v=TLSRPTv1;")]
    if len(records) != 1:
        return [], f"{name} has {len(records)} TLSRPT records (exactly one counts)"
    try:
        return parse_record(records[0]), None
    except ValueError as exc:
        return [], str(exc)
