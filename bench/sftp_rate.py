"""Shared by the audit benchmarks: operations per second over parallel paramiko SFTP sessions
through a gateway started by `harness.Gateway`."""

import threading
import time
from typing import Callable

import paramiko

from harness import Gateway


def rate(g: Gateway, sessions: int, total: int, op: Callable[[int, int, paramiko.SFTPClient], None],
         user: str = "u", password: str = "pw") -> float:
    """Logs `sessions` SFTP sessions in, then runs `op(session, k, sftp)` for k in
    0..total/sessions on each, all at once; returns operations per second."""
    clients = []
    for _ in range(sessions):
        t = paramiko.Transport(("127.0.0.1", g.port))
        t.connect(username=user, password=password)
        clients.append((t, paramiko.SFTPClient.from_transport(t)))
    per = total // sessions

    def run(i: int, sftp: paramiko.SFTPClient) -> None:
        for k in range(per):
            op(i, k, sftp)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i, s)) for i, (_, s) in enumerate(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - start
    for t, _ in clients:
        t.close()
    return per * sessions / elapsed
