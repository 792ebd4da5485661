"""Start real Redis servers for tests: standalone, a 3-master cluster, TLS-only, Sentinel.

For dtimeout's own tests and for third parties testing against Redis. Every server listens on a
free loopback port (never 6379), runs in its own process group (so ``kill`` takes everything it
started) and in its own directory. Nothing is downloaded: ``redis-server`` and ``redis-cli``
must be on PATH (``apt-get install redis-server``).

Typical use in a pytest fixture::

    server = RedisServer(tmp_path).start()
    request.addfinalizer(server.stop)
    url = server.url
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM this server when the process that started
    it dies, so a test run that is killed (Ctrl-C twice, a CI timeout) leaves no server behind.
    Start servers from the main thread: the signal follows the thread that forked."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: the fixtures' finalizers still stop it
        pass


LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 20.0
_CREATE_OPTIONS = ("--cluster-replicas", "0", "--cluster-yes")


class ServerError(RuntimeError):
    """Raised when a test server cannot be started."""


def free_port(*, with_bus: bool = False) -> int:
    """A TCP port free on the loopback interface right now (and port+10000 for a cluster bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port == 6379 or (with_bus and port + 10000 > 65535):
            continue
        if with_bus:
            with socket.socket() as s:
                try:
                    s.bind((LOOPBACK, port + 10000))
                except OSError:
                    continue
        return port
    raise ServerError("no free loopback port found")


def require(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise ServerError(f"{binary} is not on PATH (apt-get install redis-server)")
    return found


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server/client certificate for 127.0.0.1 and localhost, made at test time."""

    ca: Path
    cert: Path
    key: Path

    def query(self) -> str:
        """URL options making a client trust the CA and present the certificate."""
        return f"ssl_ca_certs={self.ca}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"


def make_tls_files(directory: Path) -> TlsFiles:
    """Create the files with the ``cryptography`` package when installed, else ``openssl``."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _tls_with_cryptography(directory)
    except ImportError:
        return _tls_with_openssl(directory)


def _tls_with_cryptography(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dtimeout test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "redis.crt", directory / "redis.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(pem_key(key))
    files.key.chmod(0o600)
    return files


def _tls_with_openssl(directory: Path) -> TlsFiles:
    openssl = require("openssl")
    files = TlsFiles(directory / "ca.crt", directory / "redis.crt", directory / "redis.key")
    ca_key, csr, ext = directory / "ca.key", directory / "redis.csr", directory / "san.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
    run("req", "-x509", "-new", "-key", str(ca_key), "-sha256", "-days", "2",
        "-subj", "/CN=dtimeout test CA", "-out", str(files.ca))  # fmt: skip
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(files.key))
    run("req", "-new", "-key", str(files.key), "-subj", "/CN=localhost", "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(files.ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext),
        "-out", str(files.cert))  # fmt: skip
    return files


class RedisServer:
    """One ``redis-server`` process; ``start``/``stop``/``kill``/``restart`` keep its port.

    ``aof=True`` turns on the append-only file with ``appendfsync always``, so a killed server
    restarts with every acknowledged write. ``tls`` makes the server TLS-only (no plain port) and
    require client certificates.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        aof: bool = False,
        tls: TlsFiles | None = None,
        password: str | None = None,
        cluster: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port(with_bus=cluster)
        self.workdir = Path(workdir) / f"redis-{self.port}"
        self.aof = aof
        self.tls = tls
        self.password = password
        self.cluster = cluster
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A dtimeout provider URL for this server (db 0)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{LOOPBACK}:{self.port}/0?{self.tls.query()}"
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def client(self, **kwargs: Any) -> Any:
        """A redis-py client for this server (decoded replies)."""
        import redis

        if self.tls:
            kwargs.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca),
                ssl_certfile=str(self.tls.cert),
                ssl_keyfile=str(self.tls.key),
            )
        return redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password, decode_responses=True, **kwargs
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        args = [require("redis-server"), "--bind", LOOPBACK, "--dir", str(self.workdir)]
        args += ["--save", "", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log")]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "yes"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "5000"]
        return [*args, *self.extra_args]

    def start(self, timeout: float = _START_TIMEOUT) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill() takes all of it
            preexec_fn=_die_with_parent,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"redis-server exited early: {self.log_tail()}")
            try:
                client = self.client(socket_timeout=1, socket_connect_timeout=1)
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except Exception as exc:  # not listening yet, or still loading the AOF
                last = exc
            time.sleep(0.05)
        raise ServerError(f"redis-server on port {self.port} not ready: {last}")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / "redis.log").read_text().splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would (the AOF keeps what was fsynced)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; always leaves the port closed."""
        self._signal(signal.SIGTERM)

    def restart(self, timeout: float = _START_TIMEOUT) -> RedisServer:
        """Start again on the same port and directory (the AOF is replayed)."""
        self.stop()
        return self.start(timeout)

    def _signal(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters joined by ``redis-cli --cluster``."""

    def __init__(self, workdir: Path, *, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir, cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{n.port}" for n in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 60.0) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{LOOPBACK}:{n.port}" for n in self.nodes]
            subprocess.run(
                [require("redis-cli"), "--cluster", "create", *addresses, *_CREATE_OPTIONS],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = node.client(socket_timeout=1)
                try:
                    info = client.cluster("info")
                finally:
                    client.close()
                text = info if isinstance(info, str) else str(info)
                states.append("cluster_state:ok" in text or "'cluster_state': 'ok'" in text)
            if all(states):
                return
            time.sleep(0.1)
        raise ServerError("the Redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisSentinelServer:
    """A ``redis-server --sentinel`` watching ``master`` under the name ``master_name``."""

    def __init__(
        self, workdir: Path, master: RedisServer, *, master_name: str = "dtimeout"
    ) -> None:
        self.master = master
        self.master_name = master_name
        self.port = free_port()
        self.workdir = Path(workdir) / f"sentinel-{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://{LOOPBACK}:{self.port}/0?master={self.master_name}"

    def start(self, timeout: float = _START_TIMEOUT) -> RedisSentinelServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind {LOOPBACK}\ndir {self.workdir}\n"
            f"sentinel monitor {self.master_name} {LOOPBACK} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 5000\n"
        )
        self.process = subprocess.Popen(
            [require("redis-server"), str(conf), "--sentinel"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1)
                try:
                    ask = client.execute_command  # untyped in redis-py
                    if ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name):  # type: ignore[no-untyped-call]
                        return self
                finally:
                    client.close()
            except Exception:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServerError("redis sentinel did not come up")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


__all__ = [
    "RedisClusterServers",
    "RedisSentinelServer",
    "RedisServer",
    "ServerError",
    "TlsFiles",
    "free_port",
    "make_tls_files",
]
