"""Aggregate reports that Pillarbox sends: DMARC (RFC 7489 §7.2) and TLS-RPT (RFC 8460).

The data comes from checks that run anyway: every DMARC evaluation of
received mail (``receive/origin.py``) and every outbound TLS session or
failure (``deliver/remote.py``).  The parts, one module per noun:

- :mod:`.spool`: the recording.  Each process counts in memory and appends
  its counts to its own file, ``<data_dir>/reports/<kind>/<YYYY-MM-DD>/<pid>-<start>.jsonl``,
  at most once a minute (one ``O_APPEND`` write, no fsync): a crash loses
  at most the last minute of report data, never mail, and no message pays
  an fsync or a write of the queue database.
- :mod:`.dmarc`: grouping rows by policy domain, the Appendix C XML, and
  the external destination check (RFC 7489 §7.1).
- :mod:`.tlsrpt`: the result types, the ``_smtp._tls`` record and the
  RFC 8460 §4 JSON.
- :mod:`.message`: the report as a message (gzip'd attachment, subject and
  header fields of RFC 7489 §7.2.1.1 and RFC 8460 §5.3).
- :mod:`.job`: the daily run (in the queue manager process, shortly after
  UTC midnight, for the day before) and ``pillarbox reports send``.  A sent
  report is recorded in the store (table ``reports_sent``) in the same
  transaction that queues it, so a report is never sent twice for a day.
"""
