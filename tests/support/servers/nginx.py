"""NginxServer: a real nginx (the Debian package) on 127.0.0.1, run as our child process.

nginx is a production server we did not write: its own range code (sendfile), its own ETags
(``"<mtime hex>-<size hex>"``) and conditional-request handling, so the client is also checked
against the real thing. Its access log, in a format of ours, is the witness of what went over
the wire (bytes per request, connections, when each response ended).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .common import Lifecycle, free_port


@dataclass(frozen=True)
class NginxLogEntry:
    """One line of the generated access log."""

    status: int
    body_bytes_sent: int
    method: str
    request_uri: str
    range: str
    #: nginx's connection serial number: requests with the same number shared a connection.
    connection: int = 0
    #: When the response ended (epoch seconds, ms resolution) and how long it took: the
    #: request was being served during ``[end - duration, end]``.
    end: float = 0.0
    duration: float = 0.0

    @property
    def path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.request_uri).path)


_NGINX_LOG_RE = re.compile(
    r'^(\d+) (\d+) "([A-Z]+)" "([^"]*)" "([^"]*)"(?: (\d+) ([\d.]+) ([\d.]+))?$'
)


def most_at_once(entries: list[NginxLogEntry]) -> int:
    """The most requests nginx was serving at the same moment (from the log's times)."""
    events = sorted(
        [(e.end - e.duration, 1) for e in entries] + [(e.end, -1) for e in entries]
    )  # at equal times an end (-1) sorts before a start: touching is not overlapping
    peak = live = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


class NginxServer(Lifecycle):
    """A real nginx serving ``root`` at ``http://127.0.0.1:PORT<prefix>`` from a temp folder.

    nginx runs in the foreground (``daemon off``) as our child, so we own its lifetime: it is
    stopped by :meth:`close`, or at interpreter exit if a test forgot to. Every path it
    writes (pid, logs, temp) is inside ``workdir``; nothing touches /etc or /var. The access
    log records ``$status $body_bytes_sent`` per request so tests can count the bytes nginx
    actually sent.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "/",
        *,
        limit_rate: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        nginx: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self.limit_rate = limit_rate
        binary = nginx or self.find_binary()
        if binary is None:
            raise FileNotFoundError("nginx not found on PATH or in /usr/sbin")
        self.binary = binary
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nginx-test-"))
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find_binary() -> str | None:
        """nginx on PATH, else Debian's /usr/sbin/nginx (sbin is often not on a user's PATH)."""
        found = shutil.which("nginx")
        if found:
            return found
        return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    def _config(self, port: int) -> str:
        w = self.workdir
        user = "user root root;" if os.geteuid() == 0 else ""
        rate = ""
        if self.limit_rate:
            # nginx only delays *between* writes; on loopback one sendfile() can push MBs, so
            # small chunks make the limit hold even for small files.
            chunk = max(1024, self.limit_rate // 10)
            rate = f"limit_rate {self.limit_rate}; sendfile_max_chunk {chunk};"
        root = str(self.root).rstrip("/") + "/"
        if self.prefix == "/":
            location = f"location / {{ root {root}; {rate} }}"
        else:
            location = f"location {self.prefix} {{ alias {root}; {rate} }}"
        return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ application/zip zip; text/csv csv; application/dicom dcm; image/jpeg jpg; }}
    default_type application/octet-stream;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    log_format counting '$status $body_bytes_sent "$request_method" "$request_uri" "$http_range" '
                        '$connection $msec $request_time';
    access_log {w}/access.log counting;
    sendfile on;
    tcp_nopush on;
    gzip off;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        {location}
    }}
}}
"""

    def start(self) -> NginxServer:
        """Write the config, start nginx, wait until the port accepts connections."""
        if self._proc is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_err = ""
        for _attempt in range(5):  # the free port may be taken between probe and bind
            port = free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._config(port))
            err = open(self.workdir / "stderr.log", "wb")  # noqa: SIM115 - owned by the child
            argv = [self.binary, "-p", f"{self.workdir}/", "-c", str(conf)]
            argv += ["-e", str(self.error_log_path)]  # else it opens /var/log/nginx first
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
            err.close()
            if self._wait_ready(proc, port):
                self._proc, self.port = proc, port
                atexit.register(self.close)  # a test that forgets close() leaves no nginx
                return self
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            last_err = self._tail_logs()
            if "Address already in use" not in last_err:
                break
        raise RuntimeError(f"nginx did not start: {last_err}")

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _tail_logs(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            p = self.workdir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-2000:])
        return " | ".join(s.strip() for s in out if s.strip())

    def close(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if it lingers; remove our temp folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.close)
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    stop = close

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("NginxServer not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The mirror URL ``http://127.0.0.1:PORT<prefix>`` (ends with ``/``)."""
        return self.base_url + self.prefix

    def url_path(self, name: str) -> str:
        return name if name.startswith("/") else self.prefix + name

    def url_for(self, name: str) -> str:
        return self.base_url + urllib.parse.quote(self.url_path(name))

    def log_entries(self, wait_for: int = 0, timeout: float = 5.0) -> list[NginxLogEntry]:
        """Parsed access log. nginx writes a line only after a response ends, which can be a
        moment after the client has read the last byte: ``wait_for=N`` polls until N lines."""
        deadline = time.monotonic() + timeout
        while True:
            entries = []
            with contextlib.suppress(FileNotFoundError):
                for line in self.access_log_path.read_text(errors="replace").splitlines():
                    m = _NGINX_LOG_RE.match(line.strip())
                    if m:
                        entries.append(
                            NginxLogEntry(
                                status=int(m.group(1)),
                                body_bytes_sent=int(m.group(2)),
                                method=m.group(3),
                                request_uri=m.group(4),
                                range=m.group(5) if m.group(5) != "-" else "",
                                connection=int(m.group(6) or 0),
                                end=float(m.group(7) or 0),
                                duration=float(m.group(8) or 0),
                            )
                        )
            if len(entries) >= wait_for or time.monotonic() >= deadline:
                return entries
            time.sleep(0.02)

    def bytes_sent(self, name: str | None = None, wait_for: int = 0) -> int:
        """Body bytes nginx logged for ``name`` (URL path or name under the prefix), or all."""
        entries = self.log_entries(wait_for=wait_for)
        if name is not None:
            path = self.url_path(name)
            entries = [e for e in entries if e.path == path]
        return sum(e.body_bytes_sent for e in entries)
