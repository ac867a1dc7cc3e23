"""The tests' own ``Server``: a picked port taken before the server binds it."""

from __future__ import annotations

import socket

from tests.conftest import Server


def test_a_port_taken_meanwhile_is_picked_again(tmp_path):
    server = Server(tmp_path / "data")
    taken = server.imap_port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server.start()
        try:
            assert server.imap_port != taken
            assert server.options["imap.listen"] == f"127.0.0.1:{server.imap_port}"
            with socket.create_connection(("127.0.0.1", server.imap_port), timeout=5) as s:
                assert s.recv(100).startswith(b"* OK")
        finally:
            server.stop()
