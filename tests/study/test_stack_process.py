"""The local stack's process helpers without servers: ports and private files."""
from __future__ import annotations

import socket

from study.stack.process import free_port, write_private


def test_free_ports_are_free_distinct_and_keep_clear_of_each_others_grpc_twin():
    plain = [free_port() for _ in range(50)]
    grpc = [free_port(grpc=True) for _ in range(50)]
    every = plain + grpc + [port + 10000 for port in grpc]
    assert len(set(every)) == len(every)
    assert all(20000 <= port < 50000 for port in grpc)
    for port in plain[:5] + grpc[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_private_files_are_mode_600_and_replaced_whole(tmp_path):
    path = write_private(tmp_path / "deep" / "secret", "one")
    assert path.read_text() == "one" and path.stat().st_mode & 0o777 == 0o600
    write_private(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["secret"]
