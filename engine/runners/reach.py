"""Is a cluster there? One TCP connect per address, before a runner hands the address to a client
that would retry for minutes (Spark's standalone client) or wait on it (Ray), so that a cluster that
is not there is one ``UnavailableError`` line (exit 3: worth a retry) within seconds.

>>> check_reachable("the Spark master", ["127.0.0.1:1"], "check --spark-master", timeout_s=1)
Traceback (most recent call last):
...
engine.errors.UnavailableError: the Spark master at 127.0.0.1:1 could not be reached (...); check --spark-master
"""

from __future__ import annotations

import socket

from ..errors import ConfigError, UnavailableError

__all__ = ["check_reachable", "host_ports"]


def host_ports(address: str, default_port: int | None = None) -> list[str]:
    """``host:port`` of each address in ``scheme://h1:p1,h2:p2/path`` (a port-less host gets ``default_port``)."""
    body = address.split("://", 1)[-1].split("/", 1)[0]
    out = []
    for item in filter(None, body.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            if default_port is None:
                raise ConfigError(f"address {address!r} names no port in {item!r}; write host:port")
            host, port = item, str(default_port)
        out.append(f"{host.strip('[]')}:{port}")
    return out


def check_reachable(what: str, addresses: list[str], hint: str, timeout_s: float = 5.0) -> None:
    """Return when one of ``addresses`` (host:port) accepts a TCP connection; else raise UnavailableError."""
    failures = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
            return
        except OSError as exc:
            failures.append(f"{address}: {exc.strerror or type(exc).__name__}")
    raise UnavailableError(f"{what} at {','.join(addresses)} could not be reached ({'; '.join(failures)}); {hint}")
