"""The run parameters are declared once (MeanShiftParams); every door takes all of them."""

from __future__ import annotations

import inspect

import click
import pytest

from pipeline.cli import PARAMETERS_ELSEWHERE, cli
from pipeline.estimator import MeanShift
from pipeline.jobs.workflow import spec_with_options
from pipeline.params import MeanShiftParams, make_params

FIELDS = MeanShiftParams.model_fields

# a value other than the default for every parameter
CHANGED = {
    "bandwidth": 2.0,
    "kernel": "gaussian",
    "blurring": True,
    "bin_seeding": True,
    "min_bin_freq": 3,
    "cluster_all": False,
    "max_iter": 17,
    "tol": 0.01,
    "bandwidth_rule": "scott",
    "bandwidth_quantile": 0.2,
    "bandwidth_n_samples": 300,
    "random_state": 5,
    "block_bytes": 2**20,
    "backend": "numpy",
    "method": "exact",
    "bin_fraction": 0.5,
    "label_by": "nearest",
    "cluster_order": "size",
}
TOGETHER = CHANGED | {"bin_seeding": False}  # bin seeding is for standard mean shift only


def test_the_changed_values_cover_every_parameter():
    assert set(CHANGED) == set(FIELDS)
    assert all(CHANGED[name] != field.default for name, field in FIELDS.items())


def test_every_parameter_is_described():
    for name, field in FIELDS.items():
        assert field.description and len(field.description) > 20, name
        assert f"    {name} : " in (MeanShiftParams.__doc__ or ""), name


def test_the_estimator_takes_every_parameter_with_the_same_default_and_docs():
    signature = inspect.signature(MeanShift)
    doc = MeanShift.__doc__ or ""
    for name, field in FIELDS.items():
        assert signature.parameters[name].default == field.default, name
        assert f"\n    {name} : " in doc, name
        assert " ".join(field.description.split()[:4]) in " ".join(doc.split()), name
    estimator = MeanShift(**TOGETHER)
    assert estimator.mean_shift_params() == make_params(**TOGETHER)
    assert {k: v for k, v in estimator.get_params().items() if k in FIELDS} == TOGETHER


def _run_options() -> dict[str, click.Option]:
    return {p.name: p for p in cli.commands["run"].params if isinstance(p, click.Option)}


def test_the_command_line_has_an_option_for_every_parameter():
    options = _run_options()
    for name, field in FIELDS.items():
        if name in PARAMETERS_ELSEWHERE:
            assert name not in options
            continue
        option = options[name]
        flag = "--" + name.replace("_", "-")
        assert flag in option.opts, name
        if name != "bandwidth":  # --bandwidth defaults to 'auto': estimated
            assert option.default == field.default, name
            assert option.help == field.description, name


@pytest.mark.parametrize("name", sorted(set(FIELDS) - set(PARAMETERS_ELSEWHERE)))
def test_each_option_reaches_the_run_parameters(name):
    command = cli.commands["run"]
    value = CHANGED[name]
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        args = [flag if value else f"--no-{flag[2:]}"]
    else:
        args = [flag, str(value)]
    context = command.make_context("run", ["-i", "in.zarr", "-o", "out.zarr", *args])
    given = {
        key: v
        for key, v in context.params.items()
        if context.get_parameter_source(key) is click.core.ParameterSource.COMMANDLINE
    }
    params = spec_with_options(None, given).mean_shift_params()
    assert getattr(params, name) == value


@pytest.mark.parametrize(("word", "rule"), [("auto", "knn"), ("scott", "scott")])
def test_bandwidth_rules_reach_the_run_parameters_from_the_cli_and_a_spec(word, rule):
    command = cli.commands["run"]
    context = command.make_context("run", ["-i", "in.zarr", "-o", "out.zarr", "-b", word])
    params = spec_with_options(
        None,
        {"bandwidth": context.params["bandwidth"]} | {"input_url": "in.zarr", "output": "out.zarr"},
    ).mean_shift_params()
    assert params.bandwidth is None and params.bandwidth_rule == rule
    from pipeline.jobs.spec import WorkflowSpec

    spec = WorkflowSpec(
        name="job",
        input={"url": "in.zarr"},
        output={"path": "out.zarr"},
        params={"bandwidth": word},
    )
    assert spec.mean_shift_params().bandwidth_rule == rule


def test_the_kernels_offered_are_the_kernels_implemented():
    from typing import get_args

    from pipeline.kernels import KERNELS
    from pipeline.kernels.compiled import KERNEL_CODES
    from pipeline.params import KernelName

    assert set(get_args(KernelName)) == set(KERNELS) == set(KERNEL_CODES)
