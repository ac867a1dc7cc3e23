"""pillarbox.access: mailbox access over the store (IMAP and POP3 sessions).

Message-level IMAP work is pure and synchronous: :mod:`.fetch` renders FETCH
items, :mod:`.search` evaluates SEARCH keys, :mod:`.sort` and :mod:`.thread`
answer SORT and THREAD (RFC 5256), :mod:`.cache` holds what they would
otherwise parse a message for.
"""
