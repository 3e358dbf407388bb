"""Azurite's Table service (and, when asked, its Queue service), each on a free loopback port for one run.

The Queue service carries queued syncs (``kvlink-sync``) to ``run_sync_job``; kvlink needs no Blob service.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Azurite's published development account; it is not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_binary(service: str = "table") -> str:
    """``AZURITE_TABLE_BIN`` (or ``AZURITE_QUEUE_BIN``), the copy ``make setup`` installs under tools/,
    or one on PATH."""
    candidates = [
        os.environ.get(f"AZURITE_{service.upper()}_BIN"),
        str(REPO / "tools" / "node_modules" / ".bin" / f"azurite-{service}"),
        shutil.which(f"azurite-{service}"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("Azurite is not installed: run `make setup` (it installs tools/node_modules)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """In-memory Azurite Table service, and Queue service with ``queue=True``; ``connection_string`` points
    kvlink at them."""

    def __init__(self, port: int | None = None, *, queue: bool = False, queue_port: int | None = None) -> None:
        self.port = port or free_port()
        self.queue_port = (queue_port or free_port()) if queue else None
        self._process: subprocess.Popen[bytes] | None = None  # the Table service
        self._queue_process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def connection_string(self) -> str:
        queue = f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};" if self.queue_port else ""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};{queue}"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        self._workdir = tempfile.TemporaryDirectory(prefix="kvlink-azurite-")
        try:
            self._process = self._launch("table", self.port)
            deadline = time.monotonic() + timeout
            self._await(self._process, self.port, deadline, timeout)
            if self.queue_port:
                self._queue_process = self._launch("queue", self.queue_port)
                self._await(self._queue_process, self.queue_port, deadline, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, service: str, port: int) -> subprocess.Popen[bytes]:
        assert self._workdir is not None
        return subprocess.Popen(
            [
                azurite_binary(service),
                f"--{service}Host",
                "127.0.0.1",
                f"--{service}Port",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
            ],
            cwd=self._workdir.name,  # Azurite writes its debug/extent files into the cwd
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @staticmethod
    def _await(process: subprocess.Popen[bytes], port: int, deadline: float, timeout: float) -> None:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"Azurite exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Azurite did not listen on port {port} within {timeout:.0f}s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def wait(self) -> int:
        """Block until Azurite's Table process ends (it should not, before :meth:`stop`); its exit status."""
        assert self._process is not None, "Azurite not started"
        return self._process.wait()

    def stop(self) -> None:
        for process in (self._queue_process, self._process):
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            if process.stderr:
                process.stderr.close()
        self._process = self._queue_process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
