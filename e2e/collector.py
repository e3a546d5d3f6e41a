"""An HTTPS audit collector for the tests: it takes the gateway's NDJSON batches and
deduplicates them by (Portcullis-Source, seq), counting what arrived twice. In-process
(`Collector`), or as a process of its own in a test host's netns:

    python3 e2e/collector.py --cert C --key K --address A --port P --out FILE

which appends `SOURCE<TAB>LINE` for every record it takes (`read_records` reads that back)."""

import argparse
import json
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Collector:
    """`stop()` is an outage: the listener closes and connections still open are dropped
    without an answer."""

    def __init__(self, cert: Path, key: Path, address: str = "127.0.0.1", port: int | None = None,
                 out: Path | None = None):
        from harness import free_port

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.address = address
        self.port = port or free_port()
        if out and out.exists():
            # A collector killed mid-write (an outage) may leave half a line: keep whole ones,
            # so that the next one's lines do not run into it. The gateway sends that batch again.
            data = out.read_bytes()
            out.write_bytes(data[:data.rfind(b"\n") + 1])
        self.out = out.open("ab") if out else None
        self.records: dict[tuple[str, int], bytes] = {}
        self.received = 0
        self.down = False
        self.lock = threading.Lock()
        self.start()

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if collector.down:
                    self.close_connection = True
                    return
                source = self.headers["Portcullis-Source"]
                lines = body.split(b"\n")[:-1]
                assert int(self.headers["Portcullis-Records"]) == len(lines)
                with collector.lock:
                    for line in lines:
                        collector.received += 1
                        collector.records[(source, json.loads(line)["seq"])] = line + b"\n"
                        if collector.out:
                            collector.out.write(source.encode() + b"\t" + line + b"\n")
                    if collector.out:
                        collector.out.flush()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((self.address, self.port), Handler)
        self.server.daemon_threads = True
        self.server.socket = self.ctx.wrap_socket(self.server.socket, server_side=True)
        self.down = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.down = True
        self.server.shutdown()
        self.server.server_close()


def read_records(out: Path) -> tuple[dict[tuple[str, int], bytes], int]:
    """What a collector process wrote: its records deduplicated by (source, seq), and how many
    it took in all."""
    records, received = {}, 0
    if out.exists():
        for entry in out.read_bytes().split(b"\n")[:-1]:
            source, line = entry.split(b"\t", 1)
            records[(source.decode(), json.loads(line)["seq"])] = line + b"\n"
            received += 1
    return records, received


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    p = argparse.ArgumentParser()
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    Collector(a.cert, a.key, a.address, a.port, a.out)
    print("listening", flush=True)
    threading.Event().wait()
