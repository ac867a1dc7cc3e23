"""What an operator gets wrong, run for real: ``pillarbox serve`` in a
temporary folder on loopback ports.

The rule: a mistake gets a clear one-line error naming the file, directory
or key and what is wrong; never a traceback, a hang, a crash loop, or a
server left half running.  (Mistakes in the configuration file itself are
covered by ``tests/unit/test_config.py``; the CLI's by ``tests/unit/test_cli.py``.)
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Server, free_port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _serve_args(*options: str, config: Path | None = None) -> list[str]:
    """``pillarbox serve`` on one free SMTP port and no other listener, one worker."""
    return [sys.executable, "-m", "pillarbox", *(["-c", str(config)] if config else []),
            "-o", "server.hostname=mx.test", "-o", "server.workers=1",
            "-o", f"smtp.listen=127.0.0.1:{free_port()}",
            *[f"-o{key}=" for key in ("imap.listen", "imap.listen_tls", "pop3.listen",
                                       "pop3.listen_tls", "submission.listen",
                                       "submission.listen_tls")],
            "-o", "delivery.processes=-1",
            *(arg for option in options for arg in ("-o", option)), "serve"]


def _serve(tmp_path: Path, *options: str, timeout: float = 20,
           user: pwd.struct_passwd | None = None) -> subprocess.CompletedProcess[str]:
    """``pillarbox serve`` (as ``user``) expected to refuse at once; its exit status and output."""
    become = [] if user is None else [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return subprocess.run([*become, *_serve_args(*options)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout, start_new_session=True)


def test_stopping_while_a_crashed_child_is_restarted_stops_every_child(tmp_path: Path) -> None:
    """SIGTERM in the pause before a young child is restarted: the supervisor
    used to die with a traceback there, leaving the queue manager running,
    holding the data directory's lock, so no server could start on it."""
    server = Server(tmp_path / "data").start()
    try:
        queue_pid = int((server.data_dir / "run" / "queue-0.pid").read_text())
        worker_pid = int((server.data_dir / "run" / "worker-0.pid").read_text())
        os.kill(worker_pid, signal.SIGKILL)     # dies young: restarted after a 1 s pause
        deadline = time.monotonic() + 10
        while "child exited" not in server.log() and time.monotonic() < deadline:
            pass
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)   # the supervisor alone, not its group
        assert server.proc.wait(30) == 0
        deadline = time.monotonic() + 20
        while _alive(queue_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(queue_pid), "the queue manager outlived the supervisor"
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# --- the certificate and its key ---------------------------------------------------


def _write_tls(folder: Path, name: str, *, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for mx.test and its key, as ``name``.crt and ``name``.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, encryption))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.parametrize(("mistake", "key", "says"), [
    ("mismatch", "tls.private_key", "is not the key of the certificate"),
    ("not a certificate", "tls.certificate", "holds no PEM certificate"),
    ("not a key", "tls.private_key", "holds no PEM private key"),
    ("encrypted key", "tls.private_key", "is encrypted with a passphrase"),
])
def test_a_bad_certificate_or_key_is_named(tmp_path: Path, mistake: str, key: str,
                                          says: str) -> None:
    """OpenSSL's own words ("[SSL] PEM lib (_ssl.c:3905)", "key values mismatch")
    named no file; an encrypted key made OpenSSL ask for its passphrase on the
    terminal, once per process."""
    cert, private_key = _write_tls(tmp_path, "a")
    other_cert, other_key = _write_tls(tmp_path, "b", passphrase=b"secret")
    files = {"mismatch": (cert, other_key.with_name("c.key")),
             "not a certificate": (private_key, private_key),
             "not a key": (cert, cert),
             "encrypted key": (other_cert, other_key)}[mistake]
    _write_tls(tmp_path, "c")
    done = _serve(tmp_path, f"tls.certificate={files[0]}", f"tls.private_key={files[1]}",
                  f"server.data_dir={tmp_path / 'data'}")
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    bad = files[1] if key == "tls.private_key" else files[0]
    assert lines[0].startswith(f"pillarbox: error: {key}: ") and str(bad) in lines[0], lines
    assert says in lines[0], lines


def test_a_key_only_root_may_read_serves_after_dropping_privileges(tmp_path: Path) -> None:
    """Certificates are loaded before privileges are dropped (a key is usually
    root's alone, mode 0600); each worker used to load it again as server.user,
    and crash on it, again and again, while the server announced it was serving."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to drop privileges)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    cert, key = _write_tls(tmp_path, "root-only")
    # The unprivileged server must reach its data directory: not under
    # pytest's 0700 temporary root.
    top = Path(tempfile.mkdtemp(prefix="pillarbox-tls-"))
    os.chmod(top, 0o755)
    try:
        server = Server(top / "data", {"server.user": "nobody", "tls.certificate": str(cert),
                                       "tls.private_key": str(key)}).start()
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                client.starttls(context=ssl._create_unverified_context())
                assert client.noop()[0] == 250
            assert "crashed" not in server.log()
        finally:
            server.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- the data directory, the log file, the ports --------------------------------------


def _as_nobody(why: str) -> pwd.struct_passwd:
    """The user nobody, to run a server as by ``setpriv``. The test skips without
    root or that user, and without setpriv except under CI, where that fails."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({why})")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    if shutil.which("setpriv") is None:
        message = "no setpriv (util-linux), to run the server as nobody"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return nobody


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints, after checking it refused."""
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pillarbox: error: "), done.stderr
    return lines[0]


def test_a_file_where_the_data_directory_should_be(tmp_path: Path) -> None:
    """mkdir's "File exists" read as though the directory were there."""
    (tmp_path / "data").write_text("", encoding="utf-8")
    line = _one_error(_serve(tmp_path, f"server.data_dir={tmp_path / 'data'}"))
    assert "server.data_dir" in line and "Not a directory" in line, line


@pytest.mark.parametrize("where", ["missing/pillarbox.log", "a-directory"])
def test_a_log_file_that_cannot_be_opened_is_named_with_its_key(tmp_path: Path,
                                                              where: str) -> None:
    """It was "[Errno 2] No such file or directory: '…'", naming no key."""
    (tmp_path / "a-directory").mkdir()
    line = _one_error(_serve(tmp_path, f"server.data_dir={tmp_path / 'data'}",
                             f"log.file={tmp_path / where}"))
    assert line.startswith(f"pillarbox: error: log.file: cannot open {tmp_path / where}: "), line


def test_a_port_another_program_holds_is_named_with_its_key(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = _one_error(_serve(tmp_path, f"server.data_dir={tmp_path / 'data'}",
                                 f"imap.listen=127.0.0.1:{port}"))
    assert line.startswith(f"pillarbox: error: imap.listen: cannot listen on 127.0.0.1:{port}: "
                           "Address already in use; another program listens there"), line


def test_a_data_directory_with_files_of_another_user(tmp_path: Path) -> None:
    """``sudo pillarbox domain add`` in the directory of a server that runs as its
    own user leaves root's database there: the start failed with SQLite's
    "attempt to write a readonly database", naming no file."""
    nobody = _as_nobody("to make files of another user")
    top = Path(tempfile.mkdtemp(prefix="pillarbox-owner-"))
    os.chmod(top, 0o755)
    try:
        data_dir = top / "data"
        data_dir.mkdir()
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        subprocess.run([sys.executable, "-m", "pillarbox", "-o", f"server.data_dir={data_dir}",
                        "domain", "add", "example.com"], check=True, capture_output=True)
        line = _one_error(_serve(top, f"server.data_dir={data_dir}", user=nobody))
        assert line.startswith(f"pillarbox: error: server.data_dir: {data_dir}/"), line
        assert "belongs to root, and this server runs as nobody" in line, line
        assert f"chown -R nobody {data_dir}" in line, line
        # What the administrator keeps there is none of the server's business:
        # with the database handed over, the start goes on (to fail on log.file).
        subprocess.run(["chown", "-R", "nobody", str(data_dir)], check=True)
        # root's SRS secret (made by an alias command under sudo): read at start
        secret = data_dir / "srs.secret"
        secret.write_text("x" * 32 + "\n", encoding="utf-8")
        secret.chmod(0o600)
        line = _one_error(_serve(top, f"server.data_dir={data_dir}", user=nobody))
        assert line.startswith(f"pillarbox: error: server.data_dir: {secret} belongs to root"), line
        os.chown(secret, nobody.pw_uid, nobody.pw_gid)
        (data_dir / "lost+found").mkdir(mode=0o700)
        (data_dir / "notes.txt").write_text("root's own\n", encoding="utf-8")
        (data_dir / "notes.txt").chmod(0o600)
        line = _one_error(_serve(top, f"server.data_dir={data_dir}", "log.file=/nonexistent/log",
                                 user=nobody))
        assert line.startswith("pillarbox: error: log.file: "), line
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_server_user_that_a_server_not_started_as_root_cannot_become(tmp_path: Path) -> None:
    """It was ignored in silence: the server ran on as whoever started it."""
    nobody = _as_nobody("to start the server as another user")
    top = Path(tempfile.mkdtemp(prefix="pillarbox-user-"))
    os.chmod(top, 0o777)
    try:
        line = _one_error(_serve(top, f"server.data_dir={top / 'data'}", "server.user=root",
                                 user=nobody))
        assert line == ("pillarbox: error: server.user: the server runs as 'nobody', not "
                        "'root', and only root can change users: start it as root or as 'root'")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_the_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the supervisor left its workers and queue manager running,
    headless, with the listening sockets and the data directory's lock, and a
    new start was refused naming the dead supervisor's PID."""
    server = Server(tmp_path / "data").start()
    children: list[int] = []
    try:
        children = [int((server.data_dir / "run" / f"{name}.pid").read_text())
                    for name in ("queue-0", "worker-0")]
        assert server.proc is not None
        server.proc.kill()                     # the supervisor alone, not its group
        server.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in children), "children outlived the supervisor"
        server.start()                        # the same data directory and ports
    finally:
        server.stop()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _presented(port: int) -> bytes:
    """The certificate the server presents on ``port`` (implicit TLS), DER."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)


def test_sighup_reads_a_renewed_certificate_and_keeps_the_old_one_when_the_new_is_bad(
        server_factory, tmp_path: Path) -> None:
    """A renewal (certbot's deploy hook, ``systemctl reload``): SIGHUP to the
    server and new handshakes present the new certificate; a broken renewal is
    logged and the certificate read before is kept. Before, SIGHUP ended the
    supervisor (the default action) and with it the whole server."""
    cert, key = _write_tls(tmp_path, "live")
    server = server_factory({"tls.certificate": str(cert), "tls.private_key": str(key),
                             "server.workers": "2"})
    assert _presented(server.imaps_port) == _der(cert)
    renewed, renewed_key = _write_tls(tmp_path, "renewed")
    shutil.copyfile(renewed, cert)
    shutil.copyfile(renewed_key, key)
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while _presented(server.imaps_port) != _der(renewed):
        assert time.monotonic() < deadline, "the renewed certificate was not presented"
        time.sleep(0.2)
    _, stranger = _write_tls(tmp_path, "stranger")
    shutil.copyfile(stranger, key)          # a key that is not the certificate's
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "tls reload failed" not in server.log():
        assert time.monotonic() < deadline, "the failed reload was not logged"
    assert "tls.private_key: the TLS private key" in server.log()
    for _ in range(4):                      # every worker still presents it
        assert _presented(server.imaps_port) == _der(renewed)
    assert server.proc.poll() is None


def test_a_data_directory_under_a_path_that_does_not_exist_is_a_typo(tmp_path: Path) -> None:
    """With a configuration file, ``server.data_dir`` under a directory that does not
    exist is refused: it used to be made, parents and all, and the empty server
    refused mail for every domain the right one had. Inside one that exists a
    first start makes it, and says so."""
    config = tmp_path / "pillarbox.toml"

    def serve_with(data_dir: Path) -> subprocess.Popen[str]:
        config.write_text(f'[server]\ndata_dir = "{data_dir}"\n'
                          f'[log]\nfile = "{tmp_path / "log"}"\n', encoding="utf-8")
        return subprocess.Popen(_serve_args(config=config), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                                start_new_session=True)

    typo = tmp_path / "pilarbox" / "data"
    proc = serve_with(typo)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert out.strip().splitlines()[-1] == (
        f"pillarbox: error: server.data_dir: {typo} does not exist, nor does {typo.parent}; "
        f"check the path (a new data directory is made only in one that exists: "
        f"mkdir -p {typo.parent} if the path is right)")
    assert not typo.parent.exists()
    log = tmp_path / "log"
    proc = serve_with(tmp_path / "data")
    try:
        deadline = time.monotonic() + 20
        while not log.exists() or "new data directory" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert "it holds no domain, account or mail yet" in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
