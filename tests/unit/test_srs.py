"""Sender Rewriting Scheme (receive/srs.py): round trips, forgeries, expiry, case."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pillarbox.receive.srs import SECRET_FILE, SRS, SRSError, is_srs, load_secrets

NOW = 1_780_000_000.0          # a fixed day
DAY = 86400


@pytest.fixture
def srs() -> SRS:
    return SRS((b"a secret of the test",))


def local_of(address: str) -> str:
    return address.rpartition("@")[0]


def test_round_trip(srs: SRS) -> None:
    rewritten = srs.forward("Alice.Smith@example.org", "fwd.example", now=NOW)
    local, _, domain = rewritten.rpartition("@")
    assert domain == "fwd.example"
    assert local.startswith("SRS0=") and is_srs(local)
    fields = local.split("=")
    assert len(fields[1]) == 4 and len(fields[2]) == 2
    assert fields[3:] == ["example.org", "Alice.Smith"]
    assert srs.reverse(local, now=NOW) == "Alice.Smith@example.org"
    assert srs.reverse(local, now=NOW + 21 * DAY) == "Alice.Smith@example.org"


def test_local_part_with_separators_survives(srs: SRS) -> None:
    rewritten = srs.forward("a=b+c-d@example.org", "fwd.example", now=NOW)
    assert srs.reverse(local_of(rewritten), now=NOW) == "a=b+c-d@example.org"


def test_null_sender_stays_null(srs: SRS) -> None:
    assert srs.forward("", "fwd.example", now=NOW) == ""


def test_tampered_hash_and_fields_are_refused(srs: SRS) -> None:
    local = local_of(srs.forward("alice@example.org", "fwd.example", now=NOW))
    _, hash_, stamp, domain, user = local.split("=")
    other = "AAAA" if hash_.upper() != "AAAA" else "BBBB"
    with pytest.raises(SRSError, match="not ours"):
        srs.reverse(f"SRS0={other}={stamp}={domain}={user}", now=NOW)
    with pytest.raises(SRSError, match="not ours"):
        srs.reverse(f"SRS0={hash_}={stamp}=evil.example={user}", now=NOW)
    with pytest.raises(SRSError, match="not ours"):
        srs.reverse(f"SRS0={hash_}={stamp}={domain}=mallory", now=NOW)
    with pytest.raises(SRSError, match="not ours"):
        SRS((b"another secret",)).reverse(local, now=NOW)
    with pytest.raises(SRSError, match="malformed"):
        srs.reverse("SRS0=abcd=AA=example.org", now=NOW)
    with pytest.raises(SRSError, match="wrong length"):
        srs.reverse(f"SRS0={hash_}x={stamp}={domain}={user}", now=NOW)
    with pytest.raises(SRSError, match="time stamp"):    # signed, but not a stamp
        body = f"A1={domain}={user}"
        srs.reverse(f"SRS0={srs._hash(body)}={body}", now=NOW)
    with pytest.raises(SRSError, match="not an SRS address"):
        srs.reverse("alice", now=NOW)


def test_expired_and_future_addresses_are_refused(srs: SRS) -> None:
    local = local_of(srs.forward("alice@example.org", "fwd.example", now=NOW))
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(local, now=NOW + 22 * DAY)
    with pytest.raises(SRSError, match="expired"):
        srs.reverse(local, now=NOW - 2 * DAY)      # made "in the future"
    short = SRS(srs.secrets, max_age_days=3)
    assert short.reverse(local, now=NOW + 3 * DAY) == "alice@example.org"
    with pytest.raises(SRSError):
        short.reverse(local, now=NOW + 4 * DAY)


def test_case_folded_by_a_relay_still_reverses(srs: SRS) -> None:
    local = local_of(srs.forward("Alice@Example.ORG", "fwd.example", now=NOW))
    assert srs.reverse(local.lower(), now=NOW) == "alice@example.org"
    assert srs.reverse(local.upper(), now=NOW) == "ALICE@EXAMPLE.ORG"
    assert is_srs("srs0=" + local[5:])


def test_old_secrets_verify_the_first_signs(srs: SRS) -> None:
    local = local_of(srs.forward("alice@example.org", "fwd.example", now=NOW))
    rotated = SRS((b"the new secret", *srs.secrets))
    assert rotated.reverse(local, now=NOW) == "alice@example.org"
    fresh = local_of(rotated.forward("alice@example.org", "fwd.example", now=NOW))
    with pytest.raises(SRSError):
        srs.reverse(fresh, now=NOW)


def test_srs0_of_another_forwarder_becomes_srs1(srs: SRS) -> None:
    first = SRS((b"the first forwarder's secret",))
    hop1 = first.forward("alice@example.org", "first.example", now=NOW)
    hop2 = srs.forward(hop1, "fwd.example", now=NOW)
    local = local_of(hop2)
    assert local.startswith("SRS1=") and "first.example==" in local
    back = srs.reverse(local, now=NOW)
    assert back == hop1                       # to the first forwarder, which reverses its own
    assert first.reverse(local_of(back), now=NOW) == "alice@example.org"
    hop3 = SRS((b"third",)).forward(hop2, "third.example", now=NOW)
    assert SRS((b"third",)).reverse(local_of(hop3), now=NOW) == hop1
    with pytest.raises(SRSError):
        srs.reverse(local.replace("first.example", "evil.example"), now=NOW)


def test_secret_file_is_made_once_private(tmp_path: Path) -> None:
    one = SRS.in_data_dir(tmp_path)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SRS.in_data_dir(tmp_path).secrets == one.secrets
    assert len(one.secrets[0]) >= 32
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]
    path.write_bytes(b"# comment\n\n")
    with pytest.raises(ValueError, match="no SRS secret"):
        load_secrets(path)
    with pytest.raises(ValueError):
        SRS(())


def test_return_path_of_reports(srs: SRS) -> None:
    """Reports about a forwarded copy go to the original sender; anything that is not
    one of our valid SRS addresses stays as it is."""
    ours = {"fwd.example"}.__contains__
    rewritten = srs.forward("alice@example.org", "fwd.example")
    assert srs.return_path(rewritten, ours) == "alice@example.org"
    assert srs.return_path(rewritten.upper().replace("FWD.EXAMPLE", "Fwd.Example"),
                           ours) == "ALICE@EXAMPLE.ORG"
    # not our domain, not SRS, a forged hash: unchanged
    assert srs.return_path(rewritten.replace("fwd.example", "other.example"),
                           ours) == rewritten.replace("fwd.example", "other.example")
    assert srs.return_path("bob@fwd.example", ours) == "bob@fwd.example"
    forged = "SRS0=AAAA=" + local_of(rewritten).split("=", 2)[2] + "@fwd.example"
    assert srs.return_path(forged, ours) == forged
    assert srs.return_path("", ours) == ""
