"""Two replicas on one PostgreSQL and one Redis: two `tollgate core` processes, one `tollgate facade` each.

Concurrent spending on one account goes through both facades with the openai
SDK (streams from the fake upstream); one core is SIGKILLed mid-load. Then:
the account never went negative, the survivor's reconciler (which takes over
the orphan sweep from the dead leader, if it was one) released the dead core's
holds, every admitted request has exactly one usage record, the ledger sums to
the balance, and a key revoked through one replica's admin API is refused by
the other within [keys] cache_seconds. A second test shows the account's rate
and concurrency limits are shared by the replicas through Redis.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai

from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.store.engine import make_engine
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.process_support import TOLLGATE, free_port, wait_ready
from tests.ledger_support import check_invariants
from tests.postgres_support import PostgresServer
from tests.redis_support import running_redis

ADMIN = "replica-test-admin-token-0123456789"
META = (("authorization", f"Bearer {ADMIN}"),)
CACHE_SECONDS = 1.0
# Each stream holds max_output_tokens x $5/1M = $0.25: the balance covers only a few at once.
BALANCE_MICROS = 1_000_000
HOLD_TOKENS = 50_000


@dataclass
class Replica:
    """One core process and the facade process in front of it."""

    name: str
    grpc_port: int
    http_port: int
    core: subprocess.Popen[bytes]
    facade: subprocess.Popen[bytes]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def admin(self) -> tuple[admin_pb2_grpc.AdminServiceStub, grpc.Channel]:
        channel = grpc.insecure_channel(self.grpc_target)
        return admin_pb2_grpc.AdminServiceStub(channel), channel


def _config(
    tmp_path: Path, name: str, database_url: str, upstream: FakeOpenAIUpstream, grpc_port: int, redis_url: str
) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[server]
grpc_address = "127.0.0.1:{grpc_port}"
[database]
url = "{database_url}"
pool_size = 4
max_overflow = 2
[admin]
token = "{ADMIN}"
[keys]
pepper = "replica-pepper"
cache_seconds = {CACHE_SECONDS}
[limits]
redis_url = "{redis_url}"
redis_failure_policy = "closed"
[metering]
reconcile_interval_seconds = 0.25
orphan_after_seconds = 1.0
[[providers]]
name = "up"
type = "openai"
base_url = "{upstream.base_url}"
[[models]]
name = "slow"
routes = [{{ provider = "up", model = "fake-slow" }}]
input_price = 2
output_price = 5
max_output_tokens = {HOLD_TOKENS}
[[models]]
name = "fast"
routes = [{{ provider = "up", model = "fake-text" }}]
input_price = 2
output_price = 5
""")
    return path


def _tollgate(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*TOLLGATE, *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@contextlib.contextmanager
def replicas(tmp_path: Path, database_url: str, upstream: FakeOpenAIUpstream) -> Iterator[list[Replica]]:
    """Two core+facade replicas on database_url, sharing one throwaway redis-server for limits."""
    with running_redis(tmp_path) as redis, _replicas(tmp_path, database_url, upstream, redis.url) as started:
        yield started


@contextlib.contextmanager
def _replicas(tmp_path: Path, database_url: str, upstream: FakeOpenAIUpstream, redis_url: str) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            grpc_port, http_port = free_port(), free_port()
            config = _config(tmp_path, name, database_url, upstream, grpc_port, redis_url)
            core = _tollgate("core", "--config", str(config), log=tmp_path / f"core-{name}.log")
            facade = _tollgate(
                "facade", "--core", f"127.0.0.1:{grpc_port}", "--listen", f"127.0.0.1:{http_port}",
                "--config", str(config), log=tmp_path / f"facade-{name}.log",
            )
            started.append(Replica(name, grpc_port, http_port, core, facade))
        for replica in started:
            wait_ready(replica.http_url, [replica.core, replica.facade], timeout=60)
        yield started
    finally:
        for replica in started:
            for process in (replica.facade, replica.core):
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
        for replica in started:
            for process in (replica.facade, replica.core):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


def _stream_once(url: str, key: str, outcome: Counter[str], finished: list[str], in_flight: set[str]) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
    request_id = ""
    try:
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        request_id = stream.response.headers["x-request-id"]
        chunks = []
        for chunk in stream:
            if not chunks:
                # Mid-stream (the slow upstream has ~0.9 s of chunks left): its hold is surely still open;
                # marked only now, because the core settles just before the last chunk, not when it is read.
                in_flight.add(request_id)
            chunks.append(chunk)
        outcome["finished" if chunks else "empty"] += 1
        finished.append(request_id)
    except openai.RateLimitError as error:  # 429 insufficient_quota: the hold did not fit
        outcome["refused" if error.code == "insufficient_quota" else f"429 {error.code}"] += 1
    except (openai.APIError, httpx.HTTPError):
        outcome["broken"] += 1  # the core behind this facade was killed (mid-request, or before it)
    finally:
        in_flight.discard(request_id)


def _spend(url: str, key: str, stop: threading.Event, outcome: Counter[str], finished: list[str],
           in_flight: set[str]) -> None:
    while not stop.is_set():
        _stream_once(url, key, outcome, finished, in_flight)


def _leader(tmp_path: Path, replicas: list[Replica]) -> tuple[Replica, Replica]:
    """(the replica whose core leads the orphan sweep, the other one), from the cores' logs."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leading = [r for r in replicas if "now leading" in (tmp_path / f"core-{r.name}.log").read_text()]
        if leading:
            assert len(leading) == 1, "two cores lead the sweep at once"
            return leading[0], next(r for r in replicas if r is not leading[0])
        time.sleep(0.1)
    raise AssertionError("no core took the lead")


def _revocation_seconds(revoke_on: Replica, check_on: Replica, tmp_key: tuple[str, str]) -> float:
    """Revokes a key through one replica's admin API; how long until the other replica refuses it."""
    key_id, secret = tmp_key
    client = openai.OpenAI(base_url=f"{check_on.http_url}/v1", api_key=secret, max_retries=0, timeout=10)
    assert client.models.list().data  # the other replica now has the key cached
    stub, channel = revoke_on.admin()
    with channel:
        stub.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=key_id), metadata=META)
    revoked = time.monotonic()
    while time.monotonic() - revoked < 10 * CACHE_SECONDS:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return time.monotonic() - revoked
        time.sleep(0.05)
    raise AssertionError("the other replica never refused the revoked key")


def test_two_replicas_share_money_survive_a_kill_and_see_revocations(postgres: PostgresServer, tmp_path: Path) -> None:
    database_url = postgres.create_database()
    # Streams of ~1 s: a stream marked in flight at its first chunk still has ~0.9 s to go when the kill
    # lands, margin enough for a client thread that reads its first chunk late on a busy box.
    with FakeOpenAIUpstream(slow_chunks=10, slow_interval=0.1) as upstream, replicas(
        tmp_path, database_url, upstream
    ) as started:
        # Kill the leader, so the survivor must also take over the sweep.
        victim, survivor = _leader(tmp_path, started)
        stub, channel = victim.admin()
        with channel:
            account = stub.CreateAccount(admin_pb2.CreateAccountRequest(display_name="shared"), metadata=META).account
            stub.TopUpAccount(
                admin_pb2.TopUpAccountRequest(account_id=account.id, amount_micros=BALANCE_MICROS, request_id="seed"),
                metadata=META,
            )
            spender = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id), metadata=META).secret
            doomed = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id), metadata=META)

        # Revocation through one replica reaches the other within the key cache bound.
        waited = _revocation_seconds(victim, survivor, (doomed.api_key.id, doomed.secret))
        # The bound is cache_seconds; the slack is the probe request's own time on a busy CI box.
        assert waited <= CACHE_SECONDS + 1.0, waited

        # Spending through both facades at once; the victim's core dies mid-load.
        stop = threading.Event()
        outcome: Counter[str] = Counter()
        finished: list[str] = []
        in_flight: dict[str, set[str]] = {victim.name: set(), survivor.name: set()}
        workers = [
            threading.Thread(
                target=_spend, args=(replica.http_url, spender, stop, outcome, finished, in_flight[replica.name])
            )
            for replica in (victim, survivor) * 3
        ]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        deadline = time.monotonic() + 20
        while not in_flight[victim.name] and time.monotonic() < deadline:
            time.sleep(0.005)
        cut = set(in_flight[victim.name])  # streams the kill cuts: their holds are open
        assert cut, "no stream was in flight on the victim"
        victim.core.send_signal(signal.SIGKILL)
        victim.core.wait(timeout=10)
        time.sleep(2.0)  # the survivor's streams (~1 s each) finish meanwhile
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        assert outcome["finished"] > 0 and outcome["refused"] > 0, outcome  # contention really happened

        # The survivor releases what the dead core held (orphan_after_seconds + an interval, in DB time).
        stub, channel = survivor.admin()
        with channel:
            deadline = time.monotonic() + 20
            while True:
                current = stub.GetAccount(admin_pb2.GetAccountRequest(account_id=account.id), metadata=META).account
                if current.held_micros == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert current.held_micros == 0, "the dead core's holds were not released"
            entries = list(
                stub.ListLedgerEntries(
                    admin_pb2.ListLedgerEntriesRequest(account_id=account.id, page_size=1000), metadata=META
                ).entries
            )
        assert survivor.facade.poll() is None and survivor.core.poll() is None
        assert "now leading" in (tmp_path / f"core-{survivor.name}.log").read_text(), "the survivor took over"

    assert current.balance_micros >= 0
    assert sum(e.amount_micros for e in entries) == current.balance_micros, "the ledger sums to the balance"
    engine = make_engine(database_url)
    try:
        snapshot = check_invariants(engine)  # one usage record per closed hold, held = open holds, non-negative
        with engine.connect() as connection:
            usage = {str(r) for (r,) in connection.exec_driver_sql("SELECT request_id FROM usage_records")}
            dead_released = connection.exec_driver_sql(
                "SELECT COUNT(*) FROM holds WHERE status = 'released'"
            ).scalar_one()
    finally:
        engine.dispose()
    admitted = set(snapshot.holds)
    assert all(status != "open" for status in snapshot.holds.values())
    assert usage == admitted, "exactly one usage record per admitted request"
    assert set(finished) <= admitted
    assert cut <= admitted and dead_released >= 1, (cut, outcome, dead_released)
    print(f"\nreplicas: {dict(outcome)}; admitted {len(admitted)}, released by survivor {dead_released};"
          f" revocation seen by the other replica after {waited:.2f}s")


def test_two_replicas_share_the_accounts_rate_and_concurrency_limits(postgres: PostgresServer, tmp_path: Path) -> None:
    """rpm 4 on the account: exactly 4 requests pass over both replicas together, then 429s with Retry-After."""
    database_url = postgres.create_database()
    with FakeOpenAIUpstream(slow_chunks=20, slow_interval=0.05) as upstream, replicas(
        tmp_path, database_url, upstream
    ) as (a, b):
        stub, channel = a.admin()
        with channel:
            account = stub.CreateAccount(
                admin_pb2.CreateAccountRequest(display_name="limited", rpm_limit=4), metadata=META
            ).account
            stub.TopUpAccount(
                admin_pb2.TopUpAccountRequest(account_id=account.id, amount_micros=BALANCE_MICROS, request_id="seed"),
                metadata=META,
            )
            secret = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=account.id), metadata=META).secret
            solo = stub.CreateAccount(
                admin_pb2.CreateAccountRequest(display_name="solo", concurrency_limit=1), metadata=META
            ).account
            stub.TopUpAccount(
                admin_pb2.TopUpAccountRequest(account_id=solo.id, amount_micros=BALANCE_MICROS, request_id="seed2"),
                metadata=META,
            )
            solo_secret = stub.CreateApiKey(admin_pb2.CreateApiKeyRequest(account_id=solo.id), metadata=META).secret

        statuses: list[int] = []
        retry_after: list[str] = []
        for replica in (a, b) * 4:  # alternate: neither replica alone sees more than 4
            reply = httpx.post(
                f"{replica.http_url}/v1/chat/completions",
                json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {secret}"},
                timeout=10,
            )
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                assert reply.json()["error"]["code"] == "rate_limit_exceeded"
                retry_after.append(reply.headers["retry-after"])
        assert statuses == [200] * 4 + [429] * 4, statuses
        assert all(int(seconds) >= 1 for seconds in retry_after)
        before = len(upstream.requests)

        # Concurrency 1 on the account: while a stream runs on replica a, replica b refuses the same account.
        client_a = openai.OpenAI(base_url=f"{a.http_url}/v1", api_key=solo_secret, max_retries=0, timeout=30)
        client_b = openai.OpenAI(base_url=f"{b.http_url}/v1", api_key=solo_secret, max_retries=0, timeout=30)
        stream = client_a.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True)
        next(iter(stream))
        try:
            client_b.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("the second replica admitted a second request in flight")
        except openai.RateLimitError as error:
            assert error.code == "rate_limit_exceeded"
        assert len(upstream.requests) == before + 1  # only the stream reached upstream
        list(stream)
        stream.close()
        # The slot is back once the stream ended (released through Redis by replica a).
        deadline = time.monotonic() + 5
        while True:
            try:
                client_b.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the slot never came back"
                time.sleep(0.1)
