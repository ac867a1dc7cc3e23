r"""netlab: a small Internet on this machine, for integration tests (needs root).

A :class:`Lab` is a set of network namespaces joined by one bridge (in a
"core" namespace), each a *host* with its own addresses from the
documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32), and a real DNS server (dnsmasq, in the host ``ns`` at
192.0.2.53 and 2001:db8::53) serving the zones the test declares.  Nothing
routes out of the lab, and nothing is configured outside its namespaces but
``/etc/netns/<namespace>/`` (resolv.conf naming the lab's DNS; hosts).
Everything is torn down when the ``with`` block ends, on failure too.
Details: :mod:`tests.netlab.lab` (wires), :mod:`tests.netlab.dns` (zones),
:mod:`tests.netlab.peers` (mail servers).

The API
-------
``require_lab(*tools)``
    Call first: skips the test when not root, when namespaces cannot be made,
    or when ``ip``, ``dnsmasq`` or one of ``tools`` (``"postfix"``,
    ``"smtp-sink"``) is missing -- and fails it instead under ``CI=true``.
``Lab(directory, *, ttl=300, dns_ipv6=True)``
    ``ttl``: the TTL of every record, and the negative TTL (SOA MINIMUM).
``lab.host(name, *addresses, dns_name=None) -> Host``
    A host; with ``dns_name`` its A/AAAA records are added to the zone.
``lab.dns`` (:class:`~tests.netlab.dns.Zone`): records, all chainable:
    ``mx(domain, preference, host)``, ``null_mx(domain)``,
    ``mx_raw(domain, preference, target)`` (targets such as an IP address),
    ``address(name, *ips)``, ``cname(alias, target)``, ``txt(name, *strings)``,
    ``ptr(ip, name)``.  Any other name is NXDOMAIN.  ``mark()`` and
    ``queries(since=mark)`` -> ``[Query(type, name, client)]`` read the query
    log; ``restart()`` serves changed records.  One TTL for all records;
    no DNSSEC (dnsmasq does not sign; see :mod:`tests.netlab.dns`).
``lab.start()``
    Builds the namespaces and starts the DNS server.
``Host``: ``.name``, ``.netns``, ``.addresses``, ``.ipv4``, ``.ipv6``, ``.directory``
    ``exec(argv, timeout=, check=, input=)`` -> CompletedProcess (text) inside
    the host; ``popen(argv, **kw)`` a background program the lab stops at the
    end; ``command(argv)`` the ``ip netns exec`` argv; ``call(fn, *args)`` runs
    a Python function in a thread that joined the host's network namespace
    (its sockets are the host's; files such as /etc/resolv.conf stay the
    machine's, so pass nameservers explicitly); ``run(coroutine)`` the same
    for a coroutine (``asyncio.run`` in that thread); ``connect(ip, port)`` ->
    the greeting bytes; ``wait_for_port(ip, port)``; ``blackhole(*prefixes)``
    / ``clear_blackholes()`` (a dead MX: connections time out); ``link(up)``.
    The host ``ns`` (``lab.dns_host``) is the DNS server's.  ``.directory``
    is scratch space under a temporary directory that the postfix and nobody
    users can reach (pytest's tmp_path is root's alone); it is removed at the
    end, after its ``*.log`` files are copied to ``<Lab directory>/logs/``.
    An address that no host has is a host that is down: connections to it
    fail with "no route to host" after ARP gives up (about 3 s).
Peers (:mod:`tests.netlab.peers`), each with ``start()`` and ``stop()``:
    ``LabPillarbox(host, hostname, accounts=(), options={})`` -- ``pillarbox
    -o key=value serve`` with ``smtp.listen`` on port 25 of the host's
    addresses and its data in ``host.directory/pillarbox``; has
    ``tests.conftest.Server``'s ``inbox(address)``, ``wait_delivered(n)``,
    ``query(sql)``, ``log()``.
    ``SmtpSink(host, options=[])`` -- smtp-sink on port 25; ``messages()``.
    ``PostfixMX(host, hostname, domains, recipients=None, tls=True,
    settings={})`` -- a private Postfix MX (smtpd with STARTTLS, virtual(8)
    to Maildirs); ``maildir(address)``, and ``PrivatePostfix``'s ``log()``,
    ``lines()``, ``wait_until()``.

Example (a complete test: Pillarbox's MX lookup from one host, mail to a
Postfix MX in another; it is ``test_the_docstring_example`` in test_lab.py)::

    import smtplib
    from pillarbox.deliver.mx import MXResolver
    from tests.netlab import DNS_V4, Lab, PostfixMX, require_lab

    def test_mail_to_the_mx_of_remote_test(tmp_path):
        require_lab("postfix")
        with Lab(tmp_path / "lab", ttl=60) as lab:
            tx = lab.host("tx", "198.51.100.10", "2001:db8:1::10")
            mx = lab.host("mx", "192.0.2.25", "2001:db8::25", dns_name="mx.remote.test")
            lab.dns.mx("remote.test", 10, "mx.remote.test").null_mx("nomail.test")
            lab.start()
            postfix = PostfixMX(mx, "mx.remote.test", ["remote.test"]).start()

            mark = lab.dns.mark()
            route = tx.run(MXResolver(nameservers=[DNS_V4]).route("remote.test"))
            assert route.hosts[0].addresses == ("2001:db8::25", "192.0.2.25")
            assert sorted((q.type, q.name) for q in lab.dns.queries(mark)) == [
                ("A", "mx.remote.test"), ("AAAA", "mx.remote.test"), ("MX", "remote.test")]

            def send(address):
                with smtplib.SMTP(address, 25, local_hostname="tx.test") as client:
                    client.starttls()
                    client.sendmail("bob@tx.test", ["alice@remote.test"],
                                    b"Subject: hi\r\n\r\nHello.\r\n")
            tx.call(send, route.hosts[0].addresses[0])
            postfix.wait_until(lambda: postfix.maildir("alice@remote.test"), 30, "delivery")
            assert b"Hello." in postfix.maildir("alice@remote.test")[0]
            # Programs run with tx.exec/tx.popen find the lab's DNS themselves:
            assert tx.exec(["getent", "hosts", "mx.remote.test"]).stdout.split()[0] == \
                "2001:db8::25"
"""

from tests.netlab.dns import Query, Record, Zone
from tests.netlab.lab import DNS_V4, DNS_V6, Host, Lab, cleanup_stale, require_lab
from tests.netlab.peers import LabPillarbox, PostfixMX, SmtpSink

__all__ = [
    "DNS_V4", "DNS_V6", "Host", "Lab", "LabPillarbox", "PostfixMX", "Query", "Record",
    "SmtpSink", "Zone", "cleanup_stale", "require_lab",
]
