"""Policy: the checks that judge who sent a message (DESIGN.md, layer 5).

Each check is small and named, has one signature, and returns a
:class:`~pillarbox.policy.verdict.Verdict` with the SMTP reply it implies.
The DNS the checks ask goes through :mod:`pillarbox.policy.dns`.
"""
