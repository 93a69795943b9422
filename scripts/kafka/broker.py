"""A real Apache Kafka 4.x broker (KRaft, single node, 127.0.0.1) from Maven Central jars.

    python scripts/kafka/broker.py start [--port 19092] [--dir .cache/kafka/run]   # fetch jars, format, start, wait
    python scripts/kafka/broker.py stop  [--dir .cache/kafka/run]

The jars (org.apache.kafka:kafka_2.13 and its runtime dependencies, pom.xml beside this file) are
fetched once with Maven into .cache/kafka/libs (ignored by git). Tests start the broker through
``start()`` from a session fixture and stop it afterwards.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LIBS = ROOT / ".cache" / "kafka" / "libs"
JAVA_OPTS = ["-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExplicitGCInvokesConcurrent",
             "-Djava.awt.headless=true"]

PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
auto.create.topics.enable=false
"""


def fetch_jars() -> Path:
    """The broker's jars, fetched with Maven on first use."""
    if LIBS.is_dir() and any(LIBS.glob("kafka_2.13-*.jar")):
        return LIBS
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker's jars from Maven Central")
    LIBS.mkdir(parents=True, exist_ok=True)
    subprocess.run([mvn, "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
                    "-DincludeScope=runtime", f"-DoutputDirectory={LIBS}"], check=True, timeout=900,
                   stdout=subprocess.DEVNULL)
    return LIBS


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _java(*args: str, log=None) -> subprocess.Popen:
    cmd = ["java", *JAVA_OPTS, "-cp", f"{fetch_jars()}/*", *args]
    return subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def start(directory: Path, port: int = 19092, timeout_s: float = 90.0) -> dict:
    """Format a fresh KRaft store in ``directory``, start the broker, wait until it answers."""
    directory = Path(directory)
    if directory.exists():
        stop(directory)
        shutil.rmtree(directory)
    if not (_free(port) and _free(port + 1)):
        raise RuntimeError(f"ports {port} and {port + 1} on 127.0.0.1 are taken; pass another --port")
    (directory / "data").mkdir(parents=True)
    config = directory / "server.properties"
    config.write_text(PROPERTIES.format(port=port, controller=port + 1, data=directory / "data"))
    cluster = "-"
    while cluster.startswith("-"):  # the tool's argument parser would read a leading '-' as an option
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    fmt = _java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster, "-c", str(config),
                log=open(directory / "format.log", "w"))
    if fmt.wait(timeout=120) != 0:
        raise RuntimeError(f"formatting the Kafka store failed; see {directory / 'format.log'}")
    proc = _java(f"-Dkafka.logs.dir={directory}", "kafka.Kafka", str(config), log=open(directory / "broker.log", "w"))
    (directory / "broker.pid").write_text(str(proc.pid))
    bootstrap = f"127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Kafka broker exited with {proc.returncode}; see {directory / 'broker.log'}")
        if _ready(bootstrap):
            return {"bootstrap": bootstrap, "pid": proc.pid, "dir": str(directory)}
        time.sleep(0.5)
    stop(directory)
    raise RuntimeError(f"the Kafka broker did not answer on {bootstrap} within {timeout_s:.0f} s; "
                       f"see {directory / 'broker.log'}")


def _ready(bootstrap: str) -> bool:
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return not _free(int(bootstrap.rsplit(":", 1)[1]))
    try:
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=2)
        return True
    except Exception:  # not up yet: librdkafka raises KafkaException until the broker answers
        return False


def stop(directory: Path, timeout_s: float = 30.0) -> None:
    pid_file = Path(directory) / "broker.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _gone(pid):
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def _gone(pid: int) -> bool:
    """Whether the broker has exited. When this process started it, it stays a zombie, which signal 0
    still reaches, until it is reaped here: stop() then waited its whole timeout on a broker long gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:  # not this process's child (or already reaped)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "fetch"])
    p.add_argument("--port", type=int, default=19092)
    p.add_argument("--dir", type=Path, default=ROOT / ".cache" / "kafka" / "run")
    args = p.parse_args(argv)
    if args.action == "fetch":
        print(fetch_jars())
    elif args.action == "start":
        info = start(args.dir, args.port)
        print(f"Kafka broker on {info['bootstrap']} (pid {info['pid']}, files in {info['dir']})")
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
