"""``python -m standins serve``: the served estate works with the CLI, and a signal stops it cleanly."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0  # generous: Azurite's start on a loaded 2-core machine; never a synchronisation sleep


class Served:
    """One ``serve`` process; its stdout read line by line on a thread so every wait is bounded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env_file = directory / "env.sh"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "standins", "serve", "--dir", str(directory), "--env-file", str(self.env_file)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def read_until(self, prefix: str) -> str:
        """The next line starting with ``prefix``; fails if the process ends or stays silent too long."""
        while True:
            try:
                line = self._queue.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"serve printed nothing for {TIMEOUT:.0f}s; so far: {self.lines}")
            if line is None:
                pytest.fail(f"serve ended before {prefix!r}: {self.lines}\n{self.stderr()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def stderr(self) -> str:
        return "".join(self._stderr)

    def exports(self) -> dict[str, str]:
        found = {}
        for line in self.lines:
            if line.startswith("export "):
                name, _, value = shlex.split(line)[1].partition("=")
                found[name] = value
        return found

    def ports(self) -> list[int]:
        env = self.exports()
        table = dict(part.split("=", 1) for part in env["AzureWebJobsStorage"].split(";") if part)["TableEndpoint"]
        urls = (env["KVLINK_DEVOPS_URL"], env["KVLINK_VAULT_URL"].replace("{vault}", "x"), table)
        return [int(urlsplit(url).port or 0) for url in urls]

    def azurite_pid(self) -> int:
        """Azurite is serve's only child process (the stand-ins are threads)."""
        children = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            children.update(int(pid) for pid in (task / "children").read_text().split())
        assert len(children) == 1, children
        return children.pop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=TIMEOUT)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path / "serve")
    yield running
    running.stop()


def kvlink(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, with exactly the settings serve exported (container variables blanked)."""
    env = {**os.environ, **served.exports()}
    return subprocess.run(  # noqa: PLW1510 -- the caller checks the exit code
        [sys.executable, "-m", "kvlink_core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_stopped_cleanly(served: Served, ports: list[int], azurite: int, signame: str) -> None:
    assert served.process.wait(timeout=TIMEOUT) == 0, served.stderr()
    served.read_until(f"# {signame}: stand-ins stopped")
    assert "Traceback" not in served.stderr()
    for port in ports:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    with pytest.raises(ProcessLookupError):
        os.kill(azurite, 0)  # serve waited for it: no process, not even a zombie


def test_the_cli_lists_the_served_links_and_finds_the_seeded_drift(served: Served) -> None:
    served.read_until("# ready")
    exports = served.exports()
    for name in ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "CONTAINER_NAME", "WEBSITE_SKU"):
        assert exports[name] == ""
    assert exports["KVLINK_EMULATOR"] == "1"
    assert Path(exports["KVLINK_CA_BUNDLE"]).parent == served.directory
    assert f"export AZURE_DEVOPS_PAT={exports['AZURE_DEVOPS_PAT']}" in served.env_file.read_text().splitlines()

    links = kvlink(served, "links", "--json")
    assert links.returncode == 0, links.stderr
    assert sorted(link["group"] for link in json.loads(links.stdout)["links"]) == ["payments-kv", "storefront-kv"]

    audit = kvlink(served, "audit", "--dry-run", "--json")
    report = json.loads(audit.stdout or "null")
    assert report is not None, audit.stderr
    found = {(f["kind"], f["group"], f["secret"]) for f in report["findings"]}
    assert found == {
        ("secret-deleted", "storefront-legacy", "search-api-key"),
        ("secret-missing", "payments-kv", "payments-webhook-secret"),
    }
    assert report["groups"]["linked"] == 2 and report["groups"]["discovered"] == 2

    ports, azurite = served.ports(), served.azurite_pid()
    served.process.send_signal(signal.SIGINT)
    assert_stopped_cleanly(served, ports, azurite, "SIGINT")


def test_sigterm_stops_it_cleanly_and_a_second_serve_on_the_same_folder_is_refused(served: Served) -> None:
    served.read_until("# ready")
    second = subprocess.run(  # noqa: PLW1510 -- checked below
        [sys.executable, "-m", "standins", "serve", "--dir", str(served.directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert second.returncode == 1
    assert f"another `python -m standins serve` is using {served.directory}" in second.stderr

    ports, azurite = served.ports(), served.azurite_pid()
    served.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(served, ports, azurite, "SIGTERM")


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    """Azurite's start waits only for *something* to listen on its port, so a taken one is refused up front."""
    from io import StringIO

    from standins.serve import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = StringIO()
        assert serve(tmp_path, port=port - 2, out=StringIO(), err=err) == 1
    assert err.getvalue() == f"error: port {port} on 127.0.0.1 is in use: pick another --port, or leave it out\n"
    err = StringIO()
    assert serve(tmp_path, port=65534, out=StringIO(), err=err) == 1
    assert "--port must be between 1 and 65533" in err.getvalue()
