"""The one exception hierarchy of the product.

Every message says what happened, to which flow or task run, and what to do::

    OrchestratorError
    ├── DefinitionError (+ TypeError)     a flow or task is declared in a way we cannot run
    ├── ParameterError (+ ValueError)     flow parameters do not bind or cannot be carried
    ├── SerializationError (+ TypeError)  a value JSON (or the opted-in pickle) cannot carry
    │   └── CacheKeyError                 a task input a cache policy cannot hash
    ├── PlanError                         the traced graph cannot be compiled (cycles, ...)
    ├── RunError                          something happened to a run
    │   ├── TaskRunFailed                 a task run ended in a failed state
    │   ├── FlowRunFailed                 a flow run ended in a failed state
    │   ├── FailedRun                     the result of a failed State was asked for (Prefect's name)
    │   └── UpstreamFailedError           a task did not run because an upstream failed
    ├── RunTimeout (+ TimeoutError)       waiting for a run took longer than asked
    ├── TaskTimedOut (+ TimeoutError)     an async task ran past its timeout_seconds (cancelled)
    ├── ConnectionProblem (+ ConnectionError)  Redis, the broker or the API cannot be reached
    ├── ConfigurationError (+ ValueError) a setting cannot be used as written (a Redis URL's form)
    ├── ChildExited (+ RuntimeError)      a server or worker started here (dev, tests) stopped
    └── ApiError                          the API refused a request (the message is its answer)

    FlowRunStopped (a BaseException)      a dynamic body's run was cancelled or timed out: it unwinds
"""

from __future__ import annotations


def describe(exc: BaseException) -> str:
    """One line naming an exception's type and message (run records, states, hooks)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OrchestratorError(Exception):
    """Root of every error this product raises on purpose."""


class DefinitionError(OrchestratorError, TypeError):
    """A flow or task is defined in a way workers could not run (lambda, closure, __main__...)."""


class ParameterError(OrchestratorError, ValueError):
    """Flow parameters are missing, unknown or of a kind that cannot be sent."""


class SerializationError(OrchestratorError, TypeError):
    """A value cannot be serialized with the serializer its task or flow uses."""


class CacheKeyError(SerializationError):
    """A cache key cannot be computed for a task run: an input has no JSON form to hash, or
    ``cache_key_fn`` returned something other than a string. Deterministic: never retried."""

    def __init__(self, message: str, task_name: str = "", parameter: str | None = None) -> None:
        super().__init__(message)
        self.task_name = task_name
        self.parameter = parameter


class PlanError(OrchestratorError):
    """The task graph traced from a flow cannot be compiled (for example a wait_for cycle)."""


class RunError(OrchestratorError):
    """Base for errors that report what happened to a run."""


class TaskRunFailed(RunError):
    """A task run ended Failed, TimedOut or Crashed; the message says why."""


class UpstreamFailedError(RunError):
    """A task was not run because one of its upstream task runs did not complete."""


class FlowRunFailed(RunError):
    """A flow run ended in a failed state; the message names the task runs that failed.

    ``original_type`` and ``original_message`` name the exception a task raised first (the
    root cause), when one did: ``FlowRun.result()`` keeps this error type but carries them.
    """

    original_type: str | None = None
    original_message: str | None = None


class FailedRun(RunError):
    """``state.result()`` of a state that did not complete and carries no exception (Prefect's name)."""


class RunTimeout(OrchestratorError, TimeoutError):
    """A wait for a run's result ran out of time; the run itself goes on."""


class ConnectionProblem(OrchestratorError, ConnectionError):
    """Redis or the broker did not answer; the message says which URL to check."""


class ConfigurationError(OrchestratorError, ValueError):
    """A setting is written in a form the product cannot use; the message names the setting and
    the form to write instead."""


class ChildExited(OrchestratorError, RuntimeError):
    """A process ``orchestrator dev`` (or a test) started exited: before it was ready, or while it
    was relied on. The message names it and quotes its log's last lines (the cause is there);
    ``log_path`` says where the rest is."""

    def __init__(self, name: str, returncode: int, when: str, reason: list[str], log_path: object = None) -> None:
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
        said = ": " + " | ".join(reason) if reason else ""
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{name} {how} {when}{said}{where}")
        self.name = name
        self.returncode = returncode
        self.reason = reason
        self.log_path = log_path


class ApiError(OrchestratorError):
    """The API answered with an error; ``status`` is its HTTP status, the message its explanation.

    ``detail`` is the API's own explanation alone (without the request and status the message
    starts with), for a caller that words it its own way (the CLI names commands, not routes).
    """

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class TaskTimedOut(OrchestratorError, TimeoutError):
    """An ``async def`` task ran past its ``timeout_seconds``: its coroutine was cancelled (it ends TimedOut)."""


class FlowRunStopped(BaseException):
    """The run a dynamic flow body belongs to was ended from outside (cancelled, timed out) while the
    body ran: its next call into the orchestrator (submit, result, wait, a subflow) raises this.

    A BaseException, like KeyboardInterrupt, so that a body's ``except Exception`` cannot swallow
    it and go on submitting: the body unwinds (its ``finally`` blocks run) and the driver ends.
    """

    def __init__(self, run_id: str, state: str, message: str = "") -> None:
        super().__init__(f"flow run {run_id} was stopped ({state}{': ' + message if message else ''})")
        self.run_id = run_id
        self.state = state


class BodySuperseded(BaseException):
    """This attempt of a dynamic body is no longer the live one: its worker was declared dead (it
    went silent past the crash window) or it handed the body over on shutdown, and another worker
    runs the body again. Raised at its next call into the orchestrator; it unwinds and records
    nothing (a BaseException for the same reason as :class:`FlowRunStopped`)."""

    def __init__(self, run_id: str, attempt: int, live: int) -> None:
        super().__init__(f"flow run {run_id}: body attempt {attempt} was superseded by attempt {live}")
        self.run_id = run_id


class ReplayDiverged(BaseException):
    """A resumed dynamic body asked, at a position of its sequence of calls, for something other than
    what its earlier attempt recorded there (the code changed between attempts, or a branch depends
    on time, randomness or outside data). The run fails with this message: replaying further could
    run work twice or attach one call's result to another.

    A BaseException so that a body's ``except Exception`` cannot swallow it.
    """

    def __init__(self, run_id: str, position: int, recorded: str, asked: str) -> None:
        super().__init__(
            f"the resumed flow body diverged from its earlier attempt at call #{position} (flow run {run_id}): "
            f"the earlier attempt called {recorded}, this one called {asked}. A body must make the same "
            "calls in the same order on every attempt: make branches depend only on parameters and task "
            "results (not on time, randomness or files the body reads itself; put those in a task), and do "
            "not deploy changed flow code under runs still going. Start a new run to run the changed code."
        )
        self.run_id = run_id
        self.position = position
