"""Minimal reproductions of kfp.local 2.16 limits that the pipelines are designed around.

Each is marked xfail(strict=True): if a kfp release fixes it, the test passes, strict makes
that a failure, and the design note in pipelines/ can be revisited.
"""


import pytest
from kfp import dsl, local


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _plan() -> list:
    return [1, 2]


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _square(x: int) -> int:
    return x * x


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _total(xs: list) -> int:
    return sum(xs)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _yes() -> bool:
    return True


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _mark(path: str):
    open(path, "w").write("ran")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.xfail(strict=True, raises=KeyError,
                   reason="kfp.local 2.16: a dsl.Collected fan-in after ParallelFor fails "
                          "with KeyError 'for-loop-…'")
def test_collected_after_parallel_for(tmp_path):
    @dsl.pipeline(name="collected")
    def pipeline() -> int:
        plan = _plan()
        with dsl.ParallelFor(plan.output) as x:
            sq = _square(x=x)
        return _total(xs=dsl.Collected(sq.output)).output

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    pipeline()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="kfp.local 2.16 evaluates a dsl.If on a task output "
                                       "as False (it cannot parse inputs.parameter_values)")
def test_if_on_a_task_output_with_the_stock_evaluator(tmp_path):
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    marker = tmp_path / "ran"

    @dsl.pipeline(name="condition")
    def pipeline(path: str):
        with dsl.If(_yes().output == True):  # noqa: E712
            _mark(path=path)

    stock = dag.ConditionEvaluator.__dict__["evaluate_condition"]
    import importlib

    importlib.reload(dag)  # undo pipelines.local's fix if an earlier test applied it
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
        pipeline(path=str(marker))
    finally:
        dag.ConditionEvaluator.evaluate_condition = stock
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_if_on_a_task_output_with_the_projects_evaluator(tmp_path):
    from pipelines.local import _patch_local_conditions

    marker = tmp_path / "ran"

    @dsl.pipeline(name="condition-fixed")
    def pipeline(path: str):
        with dsl.If(_yes().output == True):  # noqa: E712
            _mark(path=path)

    _patch_local_conditions()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    pipeline(path=str(marker))
    assert marker.read_text() == "ran"
