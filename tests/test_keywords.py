"""Prefect's decorator keywords: ours are taken, Prefect's others are refused by name with what to do instead."""

from __future__ import annotations

import pytest

import orchestrator
from orchestrator import flow, task
from orchestrator.errors import DefinitionError


def test_description_version_and_viz_return_value_are_taken() -> None:
    @task(description="adds one", version="2.1", viz_return_value=3)
    def add_one(x: int) -> int:
        return x + 1

    @flow(version="7")
    def uses_it() -> int:
        """Adds one to one."""
        return add_one(1)

    assert add_one.description == "adds one" and add_one.version == "2.1"
    assert uses_it.version == "7" and uses_it.description == "Adds one to one."
    assert uses_it() == 2
    assert add_one.with_options(retries=1).version == "2.1"  # a copy keeps them


@pytest.mark.parametrize(
    ("keyword", "says"),
    [
        ("result_storage_key", "stored under its task run's id"),
        ("on_running", "no on_running hook yet"),
        ("cache_result_in_memory", "results live in Redis"),
    ],
)
def test_a_prefect_keyword_we_do_not_support_is_refused_with_its_reason(keyword: str, says: str) -> None:
    with pytest.raises(DefinitionError) as caught:

        @task(**{keyword: "x"})
        def work() -> None: ...

    text = str(caught.value)
    assert f"{keyword}=" in text and says in text and "work" in text
    assert "retries" in text  # the valid options are listed


def test_a_misspelt_keyword_gets_the_option_it_resembles() -> None:
    with pytest.raises(DefinitionError, match=r"retires= is not an option of @task \(did you mean retries=\?\)"):

        @task(retires=3)
        def work() -> None: ...

    with pytest.raises(DefinitionError, match="task_runner=: tasks run on the Celery fleet"):

        @flow(task_runner=object())
        def body() -> None: ...


def test_the_package_has_a_version() -> None:
    assert isinstance(orchestrator.__version__, str) and orchestrator.__version__
