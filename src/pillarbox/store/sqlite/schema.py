"""The SQLite schema of the embedded store (one file, WAL mode).

``SCHEMA`` is version 1; ``MIGRATIONS[n]`` takes a database from version
``n - 1`` to ``n``.  A new database is made as version 1 and migrated, so the
path an old data directory takes is the one every test takes.

Names follow the mail domain: a queue entry has an envelope (reverse path,
DSN parameters) and recipients, each with its own state; a mailbox has
UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (RFC 9051 2.3.1.1, RFC 7162); a
message in a mailbox has a UID, flags, a MODSEQ, an internal date and a size,
and points at a shared blob.
"""

SCHEMA_VERSION = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,              -- ASCII, lower case, A-labels for IDN
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,       -- local@domain, lower case
    domain TEXT NOT NULL REFERENCES domains(name),
    password TEXT NOT NULL,             -- argon2id PHC string
    created REAL NOT NULL
);

-- One row per (source, target).  A source of '@domain' is the domain's
-- catch-all: it receives what no account or alias of the domain takes.
CREATE TABLE IF NOT EXISTS aliases (
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    domain TEXT NOT NULL REFERENCES domains(name),
    PRIMARY KEY (source, target)
);

-- Bodies: reference counted, removed when refs reaches 0.  A blob is a file
-- of its own (segment NULL: blobs/XX/<id>), or a slice of a segment file
-- that holds the small messages of one group commit (blobs/XX/<segment>,
-- bytes offset .. offset + size).  A segment goes when its last blob goes.
CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL,
    segment TEXT,
    offset INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS blobs_segment ON blobs (segment) WHERE segment IS NOT NULL;

CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,                -- also the blob id
    reverse_path TEXT NOT NULL,         -- '' for the null reverse path
    size INTEGER NOT NULL,
    arrived REAL NOT NULL,
    client_address TEXT NOT NULL,
    helo TEXT NOT NULL,
    body TEXT,                          -- 7BIT / 8BITMIME
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    dsn_ret TEXT,                       -- FULL / HDRS (RFC 3461 4.3)
    dsn_envid TEXT,                     -- RFC 3461 4.4
    state TEXT NOT NULL,                -- active / deferred / hold
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply TEXT
);
CREATE INDEX IF NOT EXISTS queue_due ON queue (state, next_attempt);

CREATE TABLE IF NOT EXISTS recipients (
    queue_id TEXT NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,              -- forward path as received
    notify TEXT,                        -- RFC 3461 4.1, comma separated
    orcpt TEXT,                         -- 'addr-type;address' (RFC 3461 4.2)
    status TEXT NOT NULL,               -- pending / delivered / failed
    last_reply TEXT,
    PRIMARY KEY (queue_id, idx)
);

CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY,
    account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT,                   -- RFC 6154: \\Sent, \\Drafts …
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account, name)
);

CREATE TABLE IF NOT EXISTS messages (
    mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    blob TEXT NOT NULL,
    prefix BLOB NOT NULL,               -- Return-Path: and Delivered-To: of this copy
    size INTEGER NOT NULL,              -- RFC822.SIZE: prefix + blob
    internal_date REAL NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    delivery TEXT UNIQUE,               -- queue id/recipient index: local delivery is idempotent
    PRIMARY KEY (mailbox, uid)
) WITHOUT ROWID;
"""


# Each entry takes the schema from the version before it to its own number.
MIGRATIONS: dict[int, str] = {
    2: """
-- Mail access (IMAP, POP3) and SASL.
-- SCRAM-SHA-256 secrets (RFC 5802 3, RFC 7677), kept beside the argon2id hash:
-- 'SCRAM-SHA-256$<iterations>$<salt b64>$<StoredKey b64>$<ServerKey b64>'.
-- NULL for an account whose password was set before they existed: it logs in
-- with PLAIN and LOGIN until its password is set again.
ALTER TABLE accounts ADD COLUMN scram TEXT;
-- Quota (RFC 9208): STORAGE in octets and MESSAGE count; NULL is no limit.
ALTER TABLE accounts ADD COLUMN quota_storage INTEGER;
ALTER TABLE accounts ADD COLUMN quota_messages INTEGER;

-- Keywords ever set in the mailbox, space separated, for the FLAGS response.
ALTER TABLE mailboxes ADD COLUMN keywords TEXT NOT NULL DEFAULT '';
-- IMAP4rev1's \\Recent (RFC 3501 2.3.2): UIDs from here on are recent for the
-- next session that selects the mailbox read-write, which moves it up.
ALTER TABLE mailboxes ADD COLUMN first_recent_uid INTEGER NOT NULL DEFAULT 1;
-- RFC 8514 SAVEDATE: when the message was put into this mailbox.
ALTER TABLE messages ADD COLUMN savedate REAL;
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (mailbox, modseq);

-- Subscriptions are names, not mailboxes: a name can stay subscribed after
-- its mailbox is deleted (RFC 9051 6.3.7).
CREATE TABLE IF NOT EXISTS subscriptions (
    account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    PRIMARY KEY (account, name)
) WITHOUT ROWID;
INSERT OR IGNORE INTO subscriptions (account, name)
    SELECT account, name FROM mailboxes WHERE subscribed = 1;

-- Expunged UIDs with the MODSEQ of their expunge, for QRESYNC's VANISHED
-- (RFC 7162 3.2.5.1).  Kept while the mailbox lives.
CREATE TABLE IF NOT EXISTS expunged (
    mailbox INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (mailbox, modseq);

-- What IMAP FETCH, SEARCH, SORT and THREAD would otherwise parse the blob
-- for, per blob (every copy of a message shares it): filled lazily by the
-- first session that needs it.  ENVELOPE and BODYSTRUCTURE as sent on the
-- wire; 'sort' is a JSON object of the header values SORT and THREAD use.
CREATE TABLE IF NOT EXISTS blob_cache (
    blob TEXT PRIMARY KEY,
    envelope BLOB,
    bodystructure BLOB,
    body BLOB,
    sort TEXT
) WITHOUT ROWID;
""",
    3: """
-- Sending mail (issue 7): each recipient's own account of its attempts, for
-- retries, 'queue show' and delivery status notifications (RFC 3464 2.3).
-- status gains 'relayed' (accepted by a next hop without DSN, RFC 3461 5.2.2).
ALTER TABLE recipients ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recipients ADD COLUMN last_attempt REAL;
-- The RFC 3463 enhanced status code of the last outcome ('4.4.1', '5.1.1').
ALTER TABLE recipients ADD COLUMN status_code TEXT;
-- The host that gave the last reply (RFC 3464 2.3.5 Remote-MTA), if any.
ALTER TABLE recipients ADD COLUMN remote_mta TEXT;
-- 1 once the delay warning (Action: delayed) went out: one per recipient.
ALTER TABLE recipients ADD COLUMN warned INTEGER NOT NULL DEFAULT 0;
""",
    4: """
-- Submission (issue 7): addresses an account may send as besides its own,
-- its sub-addresses and the aliases that lead to it ('pillarbox user
-- send-as').  'address' is normalised (local@domain, lower case, A-labels),
-- or '@domain' for every address of a domain.
CREATE TABLE IF NOT EXISTS send_as (
    account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (account, address)
) WITHOUT ROWID;
""",
    5: """
-- Outbound DKIM (issue 8): the signing keys of each domain.  The private keys
-- are PEM files (dkim/<domain>/<selector>.pem); these rows say which exist and
-- which sign: 'pending' (to be published), 'active' (signs), 'retired' (no
-- longer signs, its record stays published for the overlap).  Keys made
-- together (an RSA and an Ed25519 key) share a batch and change state together.
-- meta.dkim_version is raised with every change, for the workers' caches.
CREATE TABLE IF NOT EXISTS dkim_keys (
    domain TEXT NOT NULL,               -- ASCII, lower case (A-labels)
    selector TEXT NOT NULL,             -- lower case
    algorithm TEXT NOT NULL,            -- rsa / ed25519
    created REAL NOT NULL,
    batch INTEGER NOT NULL,
    state TEXT NOT NULL,                -- pending / active / retired
    changed REAL NOT NULL,              -- when it entered its state
    PRIMARY KEY (domain, selector)
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('dkim_version', '0');
""",
    6: """
-- Origin checks (issue 8): a DMARC policy of quarantine delivers into each
-- recipient's Junk mailbox (RFC 6154 \\Junk) instead of INBOX.
ALTER TABLE queue ADD COLUMN quarantine INTEGER NOT NULL DEFAULT 0;
""",
    7: """
-- REQUIRETLS (issue 8, RFC 8689): 'requiretls' is 1 when MAIL FROM carried
-- REQUIRETLS (the message travels on only over verified TLS to next hops that
-- offer REQUIRETLS, RFC 8689 4.2.1); 'tls_required_no' is 1 when, without it,
-- the header had "TLS-Required: No" (MTA-STS, DANE and TLS policies are not
-- enforced for the message, RFC 8689 4.2.2).  Both are tagged at receipt (4.1).
ALTER TABLE queue ADD COLUMN requiretls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queue ADD COLUMN tls_required_no INTEGER NOT NULL DEFAULT 0;
""",
    8: """
-- Aggregate reports (issue 8): DMARC (RFC 7489 7.2) and TLS-RPT (RFC 8460)
-- reports queued, one per (kind, policy domain, UTC day), inserted with the
-- report's queue entry so a report is never queued twice.  The counts they
-- are made of are files under reports/ (pillarbox.reports.spool), not rows.
CREATE TABLE IF NOT EXISTS reports_sent (
    kind TEXT NOT NULL,                 -- dmarc / tlsrpt
    domain TEXT NOT NULL,               -- the policy domain reported on
    day TEXT NOT NULL,                  -- YYYY-MM-DD (UTC)
    report_id TEXT NOT NULL,
    queue_id TEXT NOT NULL,             -- the report's queue entry (gone once delivered)
    recipients TEXT NOT NULL,           -- the rua addresses, comma separated
    queued REAL NOT NULL,
    PRIMARY KEY (kind, domain, day)
) WITHOUT ROWID;
""",
}
