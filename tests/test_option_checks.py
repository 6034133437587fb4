"""Every ``@task`` / ``@flow`` option is checked for its type and range when the function is decorated.

Pure unit tests: decorating needs no service. Each refusal must name the option, show what
was given and say what to write instead (``orchestrator/authoring/option_checks.py``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import flow, task
from orchestrator.errors import DefinitionError


def declare_task(**options: Any) -> Any:
    def work(x: int = 0) -> int:
        return x

    return task(**options)(work)


def declare_flow(**options: Any) -> Any:
    def body(x: int = 0) -> int:
        return x

    return flow(**options)(body)


# -- tags: one string is one tag ------------------------------------------------------------------
def test_a_single_string_is_one_tag_not_its_letters() -> None:
    assert declare_task(tags="db").tags == ["db"]
    assert declare_task(tags="prod").with_options(retries=1).tags == ["prod"]
    assert declare_task().with_options(tags="nightly").tags == ["nightly"]


def test_tags_take_any_iterable_of_names_in_a_stable_order() -> None:
    assert declare_task(tags=["db", "nightly"]).tags == ["db", "nightly"]
    assert declare_task(tags=("db",)).tags == ["db"]
    assert declare_task(tags={"nightly", "db", "a"}).tags == ["a", "db", "nightly"]  # a set: sorted
    assert declare_task(tags=["db", "db", "x"]).tags == ["db", "x"]  # a tag holds one slot, not two


@pytest.mark.parametrize("bad", [["db", 1], [""], 5, b"db", {"db": 1}, [None]])
def test_tags_that_are_not_names_are_refused(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"tags takes .*; got .* e\.g\. tags='db' or tags=\['db', 'nightly'\]"):
        declare_task(tags=bad)


# -- queue: one name --------------------------------------------------------------------------------
@pytest.mark.parametrize("declare", [declare_task, declare_flow])
@pytest.mark.parametrize("bad", [["a", "b"], "", 3, ("a",)])
def test_queue_is_one_non_empty_name(declare: Any, bad: Any) -> None:
    with pytest.raises(DefinitionError) as caught:
        declare(queue=bad)
    text = str(caught.value)
    assert "queue takes one queue name as a string" in text
    assert f"got {bad!r}" in text and "e.g. queue='db'" in text and "-Q a,b" in text


# -- numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("declare", [declare_task, declare_flow])
@pytest.mark.parametrize("bad", [True, -1, 1.5, "3", None])
def test_retries_is_a_whole_number_at_least_zero(declare: Any, bad: Any) -> None:
    with pytest.raises(DefinitionError, match=rf"retries takes a whole number >= 0; got {re.escape(repr(bad))} "):
        declare(retries=bad)


@pytest.mark.parametrize("declare", [declare_task, declare_flow])
@pytest.mark.parametrize("bad", [0, -1, "60", True, float("inf"), float("nan"), timedelta(seconds=5)])
def test_timeout_seconds_is_a_finite_number_above_zero(declare: Any, bad: Any) -> None:
    with pytest.raises(DefinitionError) as caught:
        declare(timeout_seconds=bad)
    text = str(caught.value)
    assert "timeout_seconds takes a number of seconds > 0" in text and "e.g. timeout_seconds=60" in text
    assert ".total_seconds()" in text


def test_good_numbers_are_taken_as_given() -> None:
    work = declare_task(retries=2, timeout_seconds=1.5, retry_jitter_factor=0.5, poke_timeout_seconds=3)
    assert (work.retries, work.timeout_seconds, work.retry_jitter_factor, work.poke_timeout_seconds) == (2, 1.5, 0.5, 3)
    body = declare_flow(retries=1, retry_delay_seconds=0, timeout_seconds=10)
    assert (body.retries, body.retry_delay_seconds, body.timeout_seconds) == (1, 0, 10)


@pytest.mark.parametrize("bad", ["10", -1, [1, -1], [], ["1"], None, True])
def test_task_retry_delay_seconds_is_seconds_or_a_list_of_them(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"retry_delay_seconds takes seconds >= 0, a list of them"):
        declare_task(retries=2, retry_delay_seconds=bad)


def test_task_retry_delay_seconds_good_forms() -> None:
    assert declare_task(retries=2, retry_delay_seconds=10).retry_delays == [10.0]
    assert declare_task(retries=2, retry_delay_seconds=(1, 10)).retry_delays == [1.0, 10.0]
    assert declare_task(retries=3, retry_delay_seconds=lambda n: [2.0] * n).retry_delays == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("bad", [[1, 2], "5", -1])
def test_flow_retry_delay_seconds_is_one_number(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"flow 'body': retry_delay_seconds takes a number of seconds >= 0"):
        declare_flow(retries=1, retry_delay_seconds=bad)


@pytest.mark.parametrize(
    ("option", "bad", "says"),
    [
        ("retry_jitter_factor", -0.1, "a number >= 0"),
        ("retry_jitter_factor", "0.5", "a number >= 0"),
        ("poke_timeout_seconds", 0, "a number of seconds > 0"),
        ("cache_expiration", "1h", "cache_expiration must be a timedelta or seconds > 0"),
    ],
)
def test_other_task_numbers_are_checked(option: str, bad: Any, says: str) -> None:
    with pytest.raises(DefinitionError, match=re.escape(says)):
        declare_task(**{option: bad})


# -- flags, texts, callables ------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "bad"), [("log_prints", "false"), ("persist_result", 1), ("refresh_cache", "yes")])
def test_task_flags_take_true_or_false_only(option: str, bad: Any) -> None:
    with pytest.raises(DefinitionError, match=rf"{option} takes True or False.*; got {re.escape(repr(bad))} "):
        declare_task(**{option: bad})


@pytest.mark.parametrize("option", ["log_prints", "plan_on_worker", "validate_parameters"])
def test_flow_flags_take_true_or_false_only(option: str) -> None:
    says = rf"{option} takes True or False; got 'false' \(str\)\. e\.g\. {option}=True"
    with pytest.raises(DefinitionError, match=says):
        declare_flow(**{option: "false"})


def test_log_prints_none_on_a_task_means_as_the_flow_says() -> None:
    assert declare_task(log_prints=None).log_prints is None
    assert declare_task(log_prints=False).log_prints is False


@pytest.mark.parametrize("declare", [declare_task, declare_flow])
@pytest.mark.parametrize(("option", "bad"), [("name", ""), ("name", 5), ("version", 2), ("description", ["x"])])
def test_names_versions_and_descriptions_are_text(declare: Any, option: str, bad: Any) -> None:
    with pytest.raises(DefinitionError, match=rf"{option} takes .*string.*; got {re.escape(repr(bad))}"):
        declare(**{option: bad})


def test_an_empty_description_falls_back_to_the_docstring() -> None:
    def documented() -> None:
        """From the docstring."""

    assert task(description="")(documented).description == "From the docstring."


def test_flow_run_name_is_a_template_or_a_function() -> None:
    with pytest.raises(DefinitionError, match=r"flow_run_name takes a template string or a function"):
        declare_flow(flow_run_name=5)
    assert declare_flow(flow_run_name="run-{x}").flow_run_name == "run-{x}"


def test_retry_on_takes_exception_classes() -> None:
    assert declare_task(retry_on=ValueError).retry_on == (ValueError,)
    assert declare_task(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)
    for bad in ("ValueError", ValueError("x"), [int], ()):
        with pytest.raises(DefinitionError, match=r"retry_on takes an exception class or a tuple of them"):
            declare_task(retry_on=bad)


def test_retry_condition_fn_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match=r"retry_condition_fn takes a function .*; got 'always'"):
        declare_task(retry_condition_fn="always")


def test_result_serializer_is_a_known_name() -> None:
    with pytest.raises(DefinitionError, match=r"result_serializer takes one non-empty string"):
        declare_task(result_serializer=["json"])


# -- with_options: the same checks ----------------------------------------------------------------------
def test_with_options_copies_get_the_same_checks() -> None:
    work = declare_task()
    with pytest.raises(DefinitionError, match="queue takes one queue name"):
        work.with_options(queue=["a", "b"])
    with pytest.raises(DefinitionError, match="retries takes a whole number"):
        work.with_options(retries=True)
    body = declare_flow()
    with pytest.raises(DefinitionError, match="log_prints takes True or False"):
        body.with_options(log_prints="no")
    with pytest.raises(DefinitionError, match="queue takes one queue name"):
        body.with_options(queue=["a", "b"])


def test_the_message_names_the_task_or_flow() -> None:
    with pytest.raises(DefinitionError, match=r"^task 'loader': retries takes"):
        declare_task(name="loader", retries=-1)
    with pytest.raises(DefinitionError, match=r"^flow 'etl': timeout_seconds takes"):
        declare_flow(name="etl", timeout_seconds=-5)
