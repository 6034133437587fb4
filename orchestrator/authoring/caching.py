"""Cache policies: which calls of a task may share one result, as in Prefect 3.

A policy turns a task run (its inputs, its task's source, its flow run) into a *cache
key*; two calls of the same task with the same key share a result, and the second one
does not execute. ``None`` means "do not cache this call". The policies and their
algebra are Prefect 3's (``prefect.cache_policies``)::

    @task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(hours=1))
    def load(table: str, client: Client) -> list[dict]: ...

    @task(cache_policy=INPUTS - "client")       # leave a parameter out of the key
    @task(cache_key_fn=lambda context, parameters: parameters["table"])

Keys are the same in every process and on every machine: inputs are hashed from the JSON
form the serializer gives them (:func:`~orchestrator.data.serialization.to_jsonable`, keys
sorted, sets in a fixed order), the task source from :func:`inspect.getsource`; never
from Python's ``hash()``, which differs per process.

Nothing is cached by default: results are not persisted by default, and a cache changes
what runs, so a task opts in (in Prefect 3 too a user chooses to lean on the cache). Where
the cache lives is not this module's business: the workers keep it in Redis
(``workers/caching.py``), an in-process run in memory (``orchestrator/local/cache.py``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import inspect
import json
import marshal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.authoring.options import UNREFERABLE, reference, resolve_reference
from orchestrator.data.serialization import to_jsonable
from orchestrator.errors import CacheKeyError, DefinitionError, SerializationError

if TYPE_CHECKING:
    from orchestrator.authoring.tasks import Task

CacheKeyFn = Callable[["CacheContext", dict[str, Any]], "str | None"]
_SET_TAG = "__orc__"


@dataclass(frozen=True)
class CacheContext:
    """What a policy (and a ``cache_key_fn``) knows of the task run it computes a key for.

    Prefect passes its ``TaskRunContext``; the fields people use from it are here by name.
    ``flow_parameters`` is read only when a policy asks (one Redis read on a worker).
    """

    task: Task[Any, Any]
    task_run_id: str
    flow_run_id: str
    flow_name: str = ""
    attempt: int = 1
    load_flow_parameters: Callable[[], dict[str, Any]] = field(default=dict, repr=False)

    @property
    def flow_parameters(self) -> dict[str, Any]:
        """The flow run's parameters as JSON data (as the run record keeps them)."""
        return self.load_flow_parameters()


# -- hashing ------------------------------------------------------------------------------
def digest(*parts: str) -> str:
    """A short stable hash (BLAKE2b, 128 bits, hex) of text parts."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _canonical(data: Any) -> Any:
    """JSON data in one order: a set's elements (tagged by the serializer) sorted by their text.

    A set of strings iterates in a different order in each process (hash randomization),
    so its JSON form alone would not give the same key twice.
    """
    if isinstance(data, list):
        return [_canonical(v) for v in data]
    if isinstance(data, dict):
        out = {k: _canonical(v) for k, v in data.items()}
        if out.get(_SET_TAG) == "set" and isinstance(out.get("v"), list):
            out["v"] = sorted(out["v"], key=lambda v: json.dumps(v, sort_keys=True))
        return out
    return data


def json_digest(data: Any) -> str:
    """The hash of JSON data, independent of dict order and set order."""
    return digest(json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"), allow_nan=True))


@functools.lru_cache(maxsize=1024)
def source_digest(fn: Callable[..., Any]) -> str:
    """The hash of a function's source text (its code object's bytes when the source is not on disk)."""
    try:
        return digest("source", inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return digest("code", marshal.dumps(code).hex() if code is not None else fn.__qualname__)


# -- policies -----------------------------------------------------------------------------
class CachePolicy:
    """Base of every policy: ``compute_key`` gives a key, or None for "do not cache this call".

    ``a + b`` combines two policies (the key changes when either part changes);
    ``policy - "name"`` leaves a parameter out of the inputs the key is computed from.
    """

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """The policy as JSON data: how ``task.with_options(cache_policy=...)`` reaches the workers.

        A policy class of your own has no such form: declared on ``@task`` it is the worker's
        own (the message carries nothing); given with ``with_options`` it is refused when the
        task is sent to workers (the marker below), and works in-process.
        """
        return {"kind": "custom", "policy": f"{UNREFERABLE}{self!r}"}

    @classmethod
    def from_cache_key_fn(cls, cache_key_fn: CacheKeyFn) -> CacheKeyFnPolicy:
        """A policy made of a ``cache_key_fn(context, parameters) -> str | None``."""
        return CacheKeyFnPolicy(cache_key_fn)

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        if isinstance(other, NoCache):
            return self
        return CompoundCachePolicy([self, other])

    def __sub__(self, parameter: str) -> CachePolicy:
        if not isinstance(parameter, str):
            raise TypeError("only a parameter name (a str) can be subtracted from a cache policy")
        return self  # a policy that does not read inputs has nothing to leave out


@dataclass(frozen=True)
class Inputs(CachePolicy):
    """The key is a hash of the task run's inputs (the values its function is called with)."""

    exclude: tuple[str, ...] = ()

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        if not inputs:
            return None  # as in Prefect: a task without inputs is not cached by INPUTS alone
        encoded: dict[str, Any] = {}
        for name, value in inputs.items():
            if name in self.exclude:
                continue
            try:
                encoded[name] = to_jsonable(value, f"task {context.task.name!r} parameter {name!r}")
            except SerializationError as exc:
                raise unhashable(context.task.name, name, value) from exc
        return json_digest(encoded)

    def spec(self) -> dict[str, Any]:
        return {"kind": "inputs", "exclude": list(self.exclude)}

    def __sub__(self, parameter: str) -> CachePolicy:
        if not isinstance(parameter, str):
            raise TypeError("only a parameter name (a str) can be subtracted from a cache policy")
        return Inputs((*self.exclude, parameter))

    def __repr__(self) -> str:
        return "INPUTS" + "".join(f" - {name!r}" for name in self.exclude)


@dataclass(frozen=True)
class TaskSource(CachePolicy):
    """The key is a hash of the task function's source: editing the task invalidates its cache."""

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        return source_digest(context.task.fn)

    def spec(self) -> dict[str, Any]:
        return {"kind": "task_source"}

    def __repr__(self) -> str:
        return "TASK_SOURCE"


@dataclass(frozen=True)
class RunId(CachePolicy):
    """The key is the flow run's id: calls share a result within one flow run only."""

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        return context.flow_run_id or context.task_run_id

    def spec(self) -> dict[str, Any]:
        return {"kind": "run_id"}

    def __repr__(self) -> str:
        return "RUN_ID"


@dataclass(frozen=True)
class FlowParameters(CachePolicy):
    """The key is a hash of the flow run's parameters."""

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        parameters = context.flow_parameters
        return json_digest(parameters) if parameters else None

    def spec(self) -> dict[str, Any]:
        return {"kind": "flow_parameters"}

    def __repr__(self) -> str:
        return "FLOW_PARAMETERS"


@dataclass(frozen=True)
class NoCache(CachePolicy):
    """Never a key: nothing is cached (adding it to a policy changes nothing)."""

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        return None

    def spec(self) -> dict[str, Any]:
        return {"kind": "none"}

    def __add__(self, other: CachePolicy) -> CachePolicy:
        return other if isinstance(other, CachePolicy) else NotImplemented

    def __repr__(self) -> str:
        return "NO_CACHE"


@dataclass(frozen=True)
class CacheKeyFnPolicy(CachePolicy):
    """The key is what ``cache_key_fn(context, parameters)`` returns (None: not cached)."""

    cache_key_fn: CacheKeyFn

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        key = self.cache_key_fn(context, inputs)
        if key is not None and not isinstance(key, str):
            raise CacheKeyError(
                f"task {context.task.name!r}: cache_key_fn {self.cache_key_fn.__qualname__} returned a "
                f"{type(key).__name__}; it must return a str (the key), or None to run this call without the cache.",
                context.task.name,
            )
        return key

    def spec(self) -> dict[str, Any]:
        # "module:qualname"; a lambda or a nested function gets the marker that refuses it on the way out
        return {"kind": "key_fn", "fn": reference(self.cache_key_fn)}

    def __repr__(self) -> str:
        return f"CacheKeyFnPolicy({getattr(self.cache_key_fn, '__qualname__', self.cache_key_fn)!r})"


@dataclass(frozen=True)
class CompoundCachePolicy(CachePolicy):
    """Several policies at once: the key is a hash of their keys (those that give None are left out)."""

    policies: Sequence[CachePolicy] = ()

    def __post_init__(self) -> None:
        flat = [
            p for part in self.policies for p in (part.policies if isinstance(part, CompoundCachePolicy) else [part])
        ]
        others = [p for p in flat if not isinstance(p, (Inputs, NoCache))]
        excludes = [name for p in flat if isinstance(p, Inputs) for name in p.exclude]
        if any(isinstance(p, Inputs) for p in flat):  # one INPUTS, leaving out every name any part left out
            others.append(Inputs(tuple(dict.fromkeys(excludes))))
        object.__setattr__(self, "policies", tuple(others))

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        keys = [k for k in (p.compute_key(context, inputs) for p in self.policies) if k is not None]
        return digest(*keys) if keys else None

    def spec(self) -> dict[str, Any]:
        return {"kind": "compound", "policies": [p.spec() for p in self.policies]}

    def __add__(self, other: CachePolicy) -> CachePolicy:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return CompoundCachePolicy([*self.policies, other])

    def __sub__(self, parameter: str) -> CachePolicy:
        if not isinstance(parameter, str):
            raise TypeError("only a parameter name (a str) can be subtracted from a cache policy")
        if not any(isinstance(p, Inputs) for p in self.policies):
            return self
        return CompoundCachePolicy([*self.policies, Inputs((parameter,))])

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.policies)


INPUTS = Inputs()
TASK_SOURCE = TaskSource()
RUN_ID = RunId()
FLOW_PARAMETERS = FlowParameters()
NO_CACHE = NoCache()


def task_input_hash(context: CacheContext, arguments: dict[str, Any]) -> str | None:
    """A ``cache_key_fn`` of Prefect's (``prefect.tasks.task_input_hash``): the inputs and the task's source.

    ``@task(cache_key_fn=task_input_hash)`` is ``cache_policy=INPUTS + TASK_SOURCE`` for code
    written for Prefect 2; an input with no JSON form fails the task run with the same error.
    """
    return digest(source_digest(context.task.fn), INPUTS.compute_key(context, arguments) or "")


def unhashable(task_name: str, parameter: str, value: Any) -> CacheKeyError:
    """The error for an input a cache key cannot be computed from: it names the parameter and the fixes."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return CacheKeyError(
        f"task {task_name!r}: cannot compute its cache key: parameter {parameter!r} holds a {kind}, which has no "
        "JSON form to hash (cache keys are computed from the JSON form of the inputs, the same on every worker). "
        f'Leave it out of the key with cache_policy=INPUTS - "{parameter}", compute the key yourself with '
        "cache_key_fn=..., or run this task without the cache with cache_policy=NO_CACHE.",
        task_name,
        parameter,
    )


@dataclass(frozen=True)
class Unusable(CachePolicy):
    """A policy a message described but this worker cannot use: each task run fails, saying why.

    Failing the task run (rather than the message) records the reason where people look,
    and the flow run still ends.
    """

    why: str

    def compute_key(self, context: CacheContext, inputs: dict[str, Any]) -> str | None:
        raise CacheKeyError(f"task {context.task.name!r}: {self.why}.", context.task.name)

    def spec(self) -> dict[str, Any]:
        return {"kind": "unusable", "why": self.why}


def policy_from_spec(spec: dict[str, Any]) -> CachePolicy:
    """The policy a message's JSON describes (inverse of :meth:`CachePolicy.spec`); never raises."""
    kind = spec.get("kind")
    if kind == "compound":
        return CompoundCachePolicy([policy_from_spec(p) for p in spec.get("policies", [])])
    if kind == "inputs":
        return Inputs(tuple(spec.get("exclude", [])))
    if kind == "key_fn":
        return _imported_key_fn(str(spec.get("fn", "")))
    simple: dict[str, CachePolicy] = {
        "task_source": TASK_SOURCE,
        "run_id": RUN_ID,
        "flow_parameters": FLOW_PARAMETERS,
        "none": NO_CACHE,
    }
    if kind in simple:
        return simple[str(kind)]
    return Unusable(f"its message names cache policy {spec!r}, which this worker cannot use (other code?)")


def _imported_key_fn(ref: str) -> CachePolicy:
    """The policy of the function a message names (a with_options cache_key_fn, on a worker).

    Found only in a module the worker has already imported (never imported because a
    message says so): see :func:`~orchestrator.authoring.options.resolve_reference`.
    """
    try:
        return CacheKeyFnPolicy(resolve_reference(ref))
    except DefinitionError as exc:
        return Unusable(f"cache_key_fn given with task.with_options(...) cannot be used on this worker: {exc}")


# -- a task's cache options -------------------------------------------------------------
@dataclass(frozen=True)
class CacheSettings:
    """A task's cache options: its policy, how long an entry lives, and whether to refresh it."""

    policy: CachePolicy
    expiration: float | None = None  # seconds; None: as long as results stay (result_ttl_seconds)
    refresh: bool = False  # run anyway and overwrite the entry

    def spec(self) -> dict[str, Any]:
        """JSON data for a message (``Task.options``)."""
        return {"policy": self.policy.spec(), "expiration": self.expiration, "refresh": self.refresh}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> CacheSettings:
        """Inverse of :meth:`spec`, on the worker."""
        expiration = spec.get("expiration")
        return cls(
            policy_from_spec(spec["policy"]), float(expiration) if expiration else None, bool(spec.get("refresh"))
        )


def _seconds(value: Any, where: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise DefinitionError(f"{where}: cache_expiration must be a timedelta or seconds > 0 (got {value!r}).")
    return float(seconds)


def cache_settings(
    where: str,
    *,
    cache_policy: CachePolicy | None = None,
    cache_key_fn: CacheKeyFn | None = None,
    cache_expiration: dt.timedelta | float | None = None,
    refresh_cache: bool = False,
) -> CacheSettings | None:
    """A task's cache options from ``@task(...)`` (``with_options`` builds its copy the same way).

    None when the task does not cache at all: the executor then checks one attribute and
    goes on. ``cache_key_fn`` is a policy of its own (as in Prefect); giving both is refused.
    """
    if cache_policy is not None and cache_key_fn is not None:
        raise DefinitionError(
            f"{where}: give cache_policy or cache_key_fn, not both; to combine them use "
            "cache_policy=INPUTS + CachePolicy.from_cache_key_fn(fn)."
        )
    if cache_policy is not None and not isinstance(cache_policy, CachePolicy):
        raise DefinitionError(f"{where}: cache_policy must be a cache policy such as INPUTS (got {cache_policy!r}).")
    if cache_key_fn is not None and not callable(cache_key_fn):
        raise DefinitionError(f"{where}: cache_key_fn must be a function (context, parameters) -> str | None.")
    policy = cache_policy or (CacheKeyFnPolicy(cache_key_fn) if cache_key_fn is not None else None)
    expiration = _seconds(cache_expiration, where)
    if policy is None:
        if expiration is not None:
            raise DefinitionError(
                f"{where}: cache_expiration is given but no cache_policy or cache_key_fn: nothing is cached by "
                "default here. Add cache_policy=INPUTS + TASK_SOURCE + RUN_ID for what Prefect 3 does by default, "
                "or another policy."
            )
        return None if not refresh_cache else CacheSettings(NO_CACHE, None, True)
    return CacheSettings(policy, expiration, bool(refresh_cache))


def exclusive_cache_options(options: dict[str, Any]) -> dict[str, Any]:
    """``with_options``: a new ``cache_policy`` replaces a declared ``cache_key_fn``, and the other way round.

    A copy is built from the declared options plus the changed ones; without this, changing
    one of the two on a task declared with the other would give both (refused).
    """
    if "cache_policy" in options and "cache_key_fn" not in options:
        return options | {"cache_key_fn": None}
    if "cache_key_fn" in options and "cache_policy" not in options:
        return options | {"cache_policy": None}
    return options
