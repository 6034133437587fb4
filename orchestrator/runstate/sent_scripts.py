"""A script call in two halves: its request sent now, its reply read when it is needed.

A task run's start (``lua/start_task_run.lua``) is a round trip that must end before the task's
function may run. Sent as soon as the worker knows the task run and read right before the function
is called, its trip to Redis and back overlaps the worker's own preparation instead of following
it. Read at once, the same path is also the cheaper way to make the two calls every task run
makes: the request is packed here, a third of what redis-py's general packing costs for these
text arguments, and it skips redis-py's wrapper around each command.

Only the ordinary case takes this path. A connection lost on the way, or a Redis that no longer
has the script (restarted, failed over), falls back to the script's ordinary call, which retries
and loads scripts as every other call does: a lost reply is sent again, as redis-py's retry
sends a command again, and a NOSCRIPT reply means the script did not run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError


def _text(value: Any, encoding: str, errors: str) -> bytes:
    """One argument as redis-py's encoder writes it (str, bytes, int, float); TypeError otherwise."""
    kind = type(value)
    if kind is str:
        return value.encode(encoding, errors)  # type: ignore[no-any-return]
    if kind is bytes:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is float:
        return repr(value).encode()
    raise TypeError(kind)


def packed(conn: Any, parts: Sequence[Any]) -> bytes:
    """``parts`` as one RESP request, the bytes redis-py's ``pack_command`` sends for them."""
    encoder = conn.encoder
    try:
        texts = [_text(p, encoder.encoding, encoder.encoding_errors) for p in parts]
    except TypeError:  # a type only redis-py knows how to write (or refuses): its packing decides
        return b"".join(conn.pack_command(*parts))
    return b"*%d\r\n" % len(texts) + b"".join(b"$%d\r\n%s\r\n" % (len(t), t) for t in texts)


def _connection(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py before 5.3 wants a command name
        return pool.get_connection("EVALSHA")


class SentScript:
    """One EVALSHA on the wire; :meth:`reply` reads its answer (once).

    The connection stays out of the pool until then: whoever sends must read (a read cut short
    closes the connection, so that no later command reads this reply as its own).
    """

    __slots__ = ("_args", "_conn", "_keys", "_pool", "_script")

    def __init__(self, client: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        self._script, self._keys, self._args = script, keys, args
        self._pool = client.connection_pool
        self._conn: Any = None
        try:
            conn = _connection(self._pool)
        except redis.RedisError:  # no connection now: the ordinary call (with its retries) makes it
            return
        try:
            conn.send_packed_command([packed(conn, ["EVALSHA", script.sha, len(keys), *keys, *args])])
        except BaseException as exc:
            conn.disconnect()
            self._pool.release(conn)
            if not isinstance(exc, redis.RedisError):
                raise
            return  # lost on the way: reply() makes the ordinary call
        self._conn = conn

    def reply(self) -> Any:
        """The script's reply (raises what the script's ordinary call would)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return self._call()
        try:
            out = conn.read_response()
        except NoScriptError:  # the script did not run: the ordinary call loads it and runs it
            self._pool.release(conn)
            return self._call()
        except (redis.ConnectionError, redis.TimeoutError):  # as redis-py's retry: sent again
            conn.disconnect()
            self._pool.release(conn)
            return self._call()
        except redis.ResponseError:  # the script's own error: the connection is fine
            self._pool.release(conn)
            raise
        except BaseException:  # interrupted mid-read: what is left of the reply must not reach another call
            conn.disconnect()
            self._pool.release(conn)
            raise
        self._pool.release(conn)
        return out

    def _call(self) -> Any:
        return self._script(keys=self._keys, args=self._args)
