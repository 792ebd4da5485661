"""One Redis connection as the store and the transport use it: the client, the scripts, the
round-trip counters, and the error context (translation itself lives in client.py).

Why our own script runner next to redis-py's ``register_script``: a ``Script`` called inside a
pipeline makes redis-py send ``SCRIPT EXISTS`` first (one more round trip on every batch), and
redis-py's client re-encodes every argument and does per-command bookkeeping that cost more
than a script call's own client work. On a standalone or sentinel server, calls are packed here
and exchanged on one pooled connection (redis-py's connection, health check and Retry); a batch
streams down it in chunks (see ``RedisConnection._stream``). Calls that come back NOSCRIPT (a
restarted server forgot its script cache) are loaded and run again: NOSCRIPT means nothing ran,
so the re-run is safe. On a cluster, single calls go through ``Script.__call__`` (the cluster
client follows redirects) and batches through per-node pipelines.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from dtimeout.clock import Clock, is_fake
from dtimeout.errors import DtimeoutError
from dtimeout.providers.redis.client import build_client, import_redis, translate
from dtimeout.providers.redis.settings import RedisSettings

if TYPE_CHECKING:
    from redis.commands.core import Script

_LIB_QUEUE = ("_now.lua",)
_LIB_STORE = ("_now.lua", "_record.lua")
# Helpers only some scripts need, written once: the claim rule, the idle consumer's wait, and
# the removal of settled messages.
_LIB_EXTRA = {
    "store_claim.lua": ("_claim.lua",),
    "store_receive.lua": ("_claim.lua", "_receive.lua"),
    "queue_receive.lua": ("_receive.lua",),
    "store_complete.lua": ("_ack.lua",),
    "queue_ack.lua": ("_ack.lua",),
}
# Largest number of items one script call carries: bounds how long Redis is busy with one call.
CHUNK = 500
# Smallest chunk a streamed batch is cut into (see RedisConnection._stream).
STREAM_MIN = 64

# Every RedisConnection, so a forked child drops the sockets it inherited (see _take).
_LIVE: weakref.WeakSet[RedisConnection] = weakref.WeakSet()


def _forget_inherited_sockets() -> None:
    for live in list(_LIVE):
        live._idle.clear()


os.register_at_fork(after_in_child=_forget_inherited_sockets)


def _read(name: str) -> str:
    return resources.files("dtimeout.providers.redis").joinpath("scripts", name).read_text("utf-8")


def script_source(name: str) -> str:
    """The full text of a script: the shared helpers it needs, then its own file."""
    libs = (*(_LIB_STORE if name.startswith("store_") else _LIB_QUEUE), *_LIB_EXTRA.get(name, ()))
    return "\n".join([*(_read(lib) for lib in libs), _read(name)])


class RedisConnection:
    """The client and scripts shared by one store or transport; counts round trips.

    ``client`` may be passed prebuilt (tests inject one); otherwise it is built on first use, so
    opening a provider never fails just because Redis is momentarily down.
    """

    def __init__(
        self,
        settings: RedisSettings,
        clock: Clock,
        role: str,
        scripts: Sequence[str],
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.role = role
        self._client = client
        self.script_names = tuple(scripts)  # what this role runs (loaded on first use)
        self._scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        # redis-py connections checked out of the client's pool and kept between calls (_take)
        self._idle: deque[Any] = deque()
        _LIVE.add(self)
        # counted from the consumer's loop and its settler thread alike, hence the lock
        self._tally_lock = threading.Lock()
        self.round_trips = 0
        self.commands = 0
        self._redis = import_redis()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock, self.errors("connect"):
                if self._client is None:
                    self._client = build_client(self.settings)
        return self._client

    def script(self, name: str) -> Script:
        found = self._scripts.get(name)
        if found is None:
            found = self.client.register_script(script_source(name))
            self._scripts[name] = found
        return found

    def now_arg(self) -> str:
        """ARGV[1] of every script: our time when the clock is fake, else '' (server TIME)."""
        return str(self.clock.now_ms()) if is_fake(self.clock) else ""

    @contextlib.contextmanager
    def errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except DtimeoutError:
            raise
        except (
            self._redis.exceptions.RedisError,
            self._redis.exceptions.RedisClusterException,
            OSError,
        ) as exc:
            raise translate(exc, where, self.settings, self.role) from exc

    # -- running scripts -------------------------------------------------------------------------

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call, one round trip (two after the server lost its script cache)."""
        if not self.settings.cluster:
            return self.run_many([(name, keys, args)])[0]
        with self.errors(name):  # the cluster client follows redirects and reloads scripts
            script = self.script(name)
            self.tally(1)
            return script(keys=list(keys), args=list(args))

    def run_many(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Several script calls in one pipeline (one round trip per node); results in order."""
        if not calls:
            return []
        if len(calls) == 1 and self.settings.cluster:
            name, keys, args = calls[0]
            return [self.run(name, keys, args)]
        with self.errors(calls[0][0]):
            results = self._pipeline(calls)
            missing = [i for i, r in enumerate(results) if _is_noscript(r)]
            if missing:
                for name in {calls[i][0] for i in missing}:
                    script = self.script(name)
                    script.sha = self.client.script_load(script.script)
                again = self._pipeline([calls[i] for i in missing])
                for index, result in zip(missing, again, strict=True):
                    results[index] = result
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return results

    def _pipeline(self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]) -> list[Any]:
        if self.settings.cluster:
            return self._cluster_pipeline(calls)
        packed = b"".join(
            self._pack_evalsha(self.script(name).sha, keys, args) for name, keys, args in calls
        )
        self.tally(len(calls))
        return self._exchange(packed, len(calls))

    def _pack_evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Any]) -> bytes:
        """``EVALSHA sha n keys… args…`` as RESP (see :func:`pack_command`)."""
        return pack_command("EVALSHA", sha, len(keys), *keys, *args)

    def _exchange(self, packed: bytes, count: int) -> list[Any]:
        """Send commands (packed by redis-py's serializer) on one pooled connection and read
        ``count`` replies; error replies come back as exception objects, in place.

        Why not redis-py's client or pipeline object: per command they add bookkeeping
        (observability, response callbacks, a pool check that costs a system call) that costs
        more than a script call's own client work. Everything else is redis-py's own: the
        packer, the connection, its health check and its ``Retry`` (which re-sends everything
        after a dropped connection, as a pipeline does; every script answers a re-send as it
        answered the first time).
        """
        conn = self._take()
        response_error = self._redis.exceptions.ResponseError

        def attempt() -> list[Any]:
            conn.send_packed_command([packed])
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except response_error as exc:
                    replies.append(exc)
            return replies

        return self._give(conn, attempt)

    def _take(self) -> Any:
        """A redis-py connection of this client's pool, kept checked out between calls.

        Why not the pool's get/release around every call: on each checkout redis-py 8 takes a
        lock, records observability counters and makes a non-blocking read (three system calls)
        to prove no stale reply is waiting; on this path that cost more than the script call it
        wraps (about 75 of 250 µs for a single schedule). A kept connection is as safe: every
        exchange reads all its replies, and one that fails half-way is disconnected (see
        ``_give``), so no reply is ever left behind on a connection put back. One connection per
        thread at a time, as with the pool; a forked child starts with none."""
        try:
            return self._idle.pop()
        except IndexError:
            return self.client.connection_pool.get_connection()

    def _give(self, conn: Any, attempt: Callable[[], list[Any]]) -> list[Any]:
        """Run ``attempt`` on ``conn`` under redis-py's Retry (which reconnects and re-sends
        after a dropped connection), then keep the connection for the next call. After any
        failure it is disconnected first: redis-py reconnects it on the next send."""
        try:
            replies = conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        except BaseException:
            conn.disconnect()
            self._keep(conn)
            raise
        self._keep(conn)
        return list(replies)

    def _keep(self, conn: Any) -> None:
        """Keep ``conn`` for the next call; with ``max_connections`` set, hand it back to the
        pool instead. A bounded pool is shared with the client's own commands (reads, a
        script reload after NOSCRIPT, ping): connections parked here would starve them ("Too
        many connections" for good once every allowed connection is kept)."""
        client = self._client
        if self.settings.max_connections is None or client is None:
            self._idle.append(conn)
        else:
            client.connection_pool.release(conn)

    def _cluster_pipeline(
        self, calls: Sequence[tuple[str, Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """redis-py's cluster pipeline refuses EVALSHA, so calls are grouped by the primary that
        owns their slot and each group goes down that node's own pipeline: one round trip per
        node. A call the node bounces (MOVED/ASK after a resharding or failover, TRYAGAIN) or
        loses to a dropped connection is run again alone through the cluster client, which
        follows redirects and refreshes the topology. Re-running is safe: every script answers
        a re-send as it answered the first time."""
        client = self.client
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, (_, keys, _) in enumerate(calls):
            node = client.get_node_from_key(keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(index)
        results: list[Any] = [None] * len(calls)
        rx = self._redis.exceptions
        for node, members in by_node.values():
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            for index in members:
                name, keys, args = calls[index]
                pipe.evalsha(self.script(name).sha, len(keys), *keys, *args)
            self.tally(len(members))
            try:
                replies = list(pipe.execute(raise_on_error=False))
            except (rx.ConnectionError, rx.TimeoutError) as exc:
                replies = [exc] * len(members)
            for index, reply in zip(members, replies, strict=True):
                results[index] = reply
        for index, reply in enumerate(results):
            bounced = (rx.ConnectionError, rx.TimeoutError, rx.AskError, rx.TryAgainError)
            if isinstance(reply, (*bounced, rx.ClusterDownError)) or (
                isinstance(reply, rx.ResponseError)
                and str(reply).startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"))
            ):
                name, keys, args = calls[index]
                self.tally(1)
                results[index] = self.script(name)(keys=list(keys), args=list(args))
        return results

    def key_slot(self, key: str) -> int:
        from redis.crc import key_slot

        return int(key_slot(key.encode("utf-8")))

    def batched(
        self,
        name: str,
        items: Sequence[Any],
        key_of: Callable[[Any], str],
        args_of: Callable[[Any], Any],
        common: Sequence[Any],
        extra_keys: Sequence[str] = (),
        convert: Callable[[Any, Any], Any] | None = None,
    ) -> list[Any]:
        """Run a multi-item script over ``items``; one reply per item, in order (passed through
        ``convert(item, reply)`` when given).

        JSON both ways: the items' arguments go as one JSON array in ARGV[2] and the script
        answers with one JSON array (``cjson`` in Redis). One bulk string each way is encoded
        and parsed in C; separate arguments and nested RESP replies cost a Python call per
        element in redis-py, which was most of a batch's client time.

        Standalone: see :meth:`_stream`. Cluster: one call per hash slot (a script may only
        touch keys of one slot), pipelined per node. ``extra_keys`` follow the items' keys in
        every call (standalone only).
        """
        if not items:
            return []
        if not self.settings.cluster:
            if len(items) > STREAM_MIN:
                return self._stream(name, items, key_of, args_of, common, extra_keys, convert)
            keys = [*(key_of(item) for item in items), *extra_keys]
            reply = self.run(
                name, keys, [self.now_arg(), _json([args_of(i) for i in items]), *common]
            )
            values = json.loads(reply)
            if convert is None:
                return list(values)
            return [convert(item, value) for item, value in zip(items, values, strict=True)]
        groups: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(self.key_slot(key_of(item)), []).append(index)
        order = list(groups.values())
        calls = []
        for members in order:
            packed = _json([args_of(items[i]) for i in members])
            keys = [key_of(items[i]) for i in members]
            calls.append((name, [*keys, *extra_keys], [self.now_arg(), packed, *common]))
        replies = self.run_many(calls)
        out: list[Any] = [None] * len(items)
        for members, reply in zip(order, replies, strict=True):
            for index, value in zip(members, json.loads(reply), strict=True):
                out[index] = convert(items[index], value) if convert else value
        return out

    def _stream(
        self,
        name: str,
        items: Sequence[Any],
        key_of: Callable[[Any], str],
        args_of: Callable[[Any], Any],
        common: Sequence[Any],
        extra_keys: Sequence[str],
        convert: Callable[[Any, Any], Any] | None,
    ) -> list[Any]:
        """A batch as a few script calls down one connection, in one round trip, overlapped
        with Redis: each chunk is encoded and sent while Redis runs the previous one, and each
        reply is decoded (and converted) while Redis runs the next. Chunks are a quarter of the
        batch (at least ``STREAM_MIN``, at most ``CHUNK`` items): on two cores the client's
        encoding and decoding then hide behind the server's work instead of adding to it.
        Each item is its own atomic transition, so splitting a batch changes no outcome."""
        size = min(CHUNK, max(STREAM_MIN, -(-len(items) // 4)))
        starts = range(0, len(items), size)
        script = self.script(name)
        sent: list[bytes] = []  # packed chunks, kept for a re-send after a dropped connection

        def packets() -> Iterator[bytes]:
            yield from sent
            for start in starts[len(sent) :]:
                chunk = items[start : start + size]
                keys = [*(key_of(item) for item in chunk), *extra_keys]
                args = [self.now_arg(), _json([args_of(item) for item in chunk]), *common]
                sent.append(self._pack_evalsha(script.sha, keys, args))
                yield sent[-1]

        def decode_chunk(index: int, reply: Any) -> list[Any]:
            chunk = items[starts[index] : starts[index] + size]
            values = json.loads(reply)
            if convert is None:
                return list(values)
            return [convert(item, value) for item, value in zip(chunk, values, strict=True)]

        with self.errors(name):
            replies = self._exchange_stream(packets, len(starts), decode_chunk)
            if any(_is_noscript(r) for r in replies):  # a restarted server forgot the script
                script.sha = self.client.script_load(script.script)
                sent.clear()
                replies = self._exchange_stream(packets, len(starts), decode_chunk)
            out: list[Any] = []
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
                out.extend(reply)
            return out

    def _exchange_stream(
        self,
        packets: Callable[[], Iterator[bytes]],
        count: int,
        decode_chunk: Callable[[int, Any], Any],
    ) -> list[Any]:
        """Like :meth:`_exchange`, sending each packet as it is produced and decoding each
        reply as it arrives; error replies come back as exception objects, in place."""
        conn = self._take()
        response_error = self._redis.exceptions.ResponseError
        self.tally(count)

        def attempt() -> list[Any]:
            for packet in packets():
                conn.send_packed_command([packet], check_health=False)
            replies: list[Any] = []
            for index in range(count):
                try:
                    reply = conn.read_response()
                except response_error as exc:
                    replies.append(exc)
                    continue
                replies.append(decode_chunk(index, reply))
            return replies

        try:
            conn.check_health()
        except BaseException:
            conn.disconnect()
            self._keep(conn)
            raise
        return self._give(conn, attempt)

    def ping(self) -> None:
        with self.errors("ping"):
            self.client.ping()

    def close(self) -> None:
        client, self._client = self._client, None
        idle, self._idle = self._idle, deque()
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.disconnect()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def tally(self, commands: int) -> None:
        """Count one round trip carrying ``commands`` commands (for ``stats`` and the bench)."""
        with self._tally_lock:
            self.round_trips += 1
            self.commands += commands

    def stats(self) -> dict[str, int]:
        with self._tally_lock:
            return {"round_trips": self.round_trips, "commands": self.commands}


def pack_command(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings, the only shape we send (``str`` as UTF-8,
    ``int`` in decimal), byte for byte what redis-py's ``PythonRespSerializer`` writes for the
    same arguments (a test holds it to that).

    Why our own: redis-py's serializer is general (floats, memoryviews, buffer splitting) and
    re-joins the buffer per argument; a script call has a dozen arguments, and packing them
    cost more client time there than sending them (23 µs against 8 µs per call here)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = (
            arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else b"%d" % arg
        )
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _json(values: Sequence[Any]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def _is_noscript(result: Any) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(result, NoScriptError) or (
        isinstance(result, BaseException) and "NOSCRIPT" in str(result)
    )


def decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def optional(value: Any) -> str | None:
    text = decode(value) if value is not None else ""
    return text or None


__all__ = [
    "CHUNK",
    "RedisConnection",
    "build_client",
    "pack_command",
    "script_source",
    "translate",
]
