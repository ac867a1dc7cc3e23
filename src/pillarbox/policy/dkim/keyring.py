"""Where the signing keys of the data directory live, and how they become signers.

The store keeps which keys a domain has and their state
(``pillarbox.store.dkim_keys``); the private keys themselves are PEM files
(PKCS#8, mode 0600, in directories of mode 0700) at::

    <data_dir>/dkim/<domain>/<selector>.pem

so that a person can see at a glance which keys exist, back them up with the
data directory, and so that no key material sits in the database (whoever
reads a key file can sign as the domain: RFC 6376 §8.14 leaves key
protection to the signer).
"""

from __future__ import annotations

import os
from pathlib import Path

from pillarbox.policy.dkim.keys import key_algorithm, read_private_key, write_private_key
from pillarbox.policy.dkim.sign import PrivateKey, Signer

__all__ = ["key_path", "load_signer", "remove_key_file", "save_key"]


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    """The PEM file of the key ``selector`` of ``domain``."""
    if not domain or "/" in domain or domain.startswith("."):
        raise ValueError(f"DKIM key: {domain!r} is not a domain name")
    if not selector or "/" in selector or selector.startswith("."):
        raise ValueError(f"DKIM key: {selector!r} is not a selector")
    return data_dir / "dkim" / domain / f"{selector}.pem"


def save_key(data_dir: Path, domain: str, selector: str, key: PrivateKey) -> Path:
    """Write a new key file (never over an existing one) and return its path.

    Run as root beside a server that dropped its privileges, the new file
    and directories are given to the data directory's owner, so the
    server's workers can read them.
    """
    path = key_path(data_dir, domain, selector)
    if path.exists():
        raise FileExistsError(f"DKIM key file {path} exists already")
    owner = data_dir.stat()
    for d in (data_dir / "dkim", path.parent):
        if not d.is_dir():
            d.mkdir(mode=0o700)
            _give(d, owner)
    write_private_key(path, key)
    _give(path, owner)
    return path


def _give(path: Path, owner: os.stat_result) -> None:
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)


def load_signer(data_dir: Path, domain: str, selector: str, algorithm: str) -> Signer:
    """The signer of one key; ValueError naming the file if it cannot be read or
    is not the ``algorithm`` the store says."""
    path = key_path(data_dir, domain, selector)
    key = read_private_key(path)
    if key_algorithm(key) != algorithm:
        raise ValueError(f"DKIM key {path}: an {key_algorithm(key)} key, "
                         f"but the store lists it as {algorithm}")
    return Signer(domain, selector, key)


def remove_key_file(data_dir: Path, domain: str, selector: str) -> bool:
    """Remove a key file (and its domain's directory once empty); False if it was not there."""
    path = key_path(data_dir, domain, selector)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    try:
        path.parent.rmdir()
    except OSError:
        pass
    return True
