"""pillarbox.mime: the MIME engine, pure functions over stored message octets.

Nothing here does I/O or re-serialises a message; everything works from the
bytes (or a memory-mapped blob) as stored, so signatures stay valid and large
messages are never copied whole.

Modules, one per noun:

- :mod:`.parser`     the part tree with byte offsets (RFC 2045/2046/5322)
- :mod:`.headers`    header fields, unfolding, RFC 2047 encoded words
- :mod:`.params`     Content-Type / Content-Disposition parameters, RFC 2231
- :mod:`.addresses`  RFC 5322 address lists with groups and obsolete syntax
- :mod:`.dates`      RFC 5322 dates with obsolete zones
- :mod:`.encodings`  base64 and quoted-printable
- :mod:`.imap`       ENVELOPE, BODYSTRUCTURE, BODY[section], BINARY[section]
- :mod:`.generate`   header encoding and folding, 8bit→7bit downgrade
- :mod:`.dsn`        delivery status notifications and system messages
- :mod:`.text`       text of a message for search, HTML reduced to text

Malformed input never raises: every function returns a best-effort answer.
"""

from .addresses import Group, Mailbox, parse_address_list, parse_mailbox_list
from .dates import format_date, parse_date
from .headers import HeaderField, Headers, decode_words, unfold
from .parser import Part, parse

__all__ = [
    "Group",
    "HeaderField",
    "Headers",
    "Mailbox",
    "Part",
    "decode_words",
    "format_date",
    "parse",
    "parse_address_list",
    "parse_date",
    "parse_mailbox_list",
    "unfold",
]
