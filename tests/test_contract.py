"""The contract every registered method meets, a plugin's included, on a tiny random LLaMA.

For each method (its default config at the top-level defaults: 4 bits, per-channel), through the
run's own phases (``plan → load → quantize → pack → evaluate → record``):
- its config is validated (an unknown option is one ``ConfigError`` line);
- its capabilities are declared, and ``pack=true`` is refused at plan time exactly when it cannot pack;
- the weights change exactly when it quantizes; the bits are accounted (nominal ≤ with overhead,
  under 16 when it quantizes, the bit plan within its declared bit widths);
- it hands over an integer grid for every layer exactly when it is packable, and then packing
  reproduces the fake-quant logits;
- every quantized layer's error is recorded;
- its run record is readable and the report renders its row.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from harness import hookimpl
from harness.errors import ConfigError
from harness.plugins.hookspecs import RunContext
from harness.plugins.manager import make_plugins
from harness.plugins.method import Capabilities, Method
from harness.quantize.driver import LayerResult
from harness.quantize.layers import linear_layers
from harness.quantize.primitives import Grid, QuantSpec, relative_error, rtn
from harness.results.records import load_records, readable, record_path
from harness.results.tables import build_tables
from harness.run import evaluate, load, make_record, pack, plan, quantize
from harness.util import REPO_ROOT, write_atomic

# The contract, not the kernels (tests/test_kernels.py): CI runs this file once, with Triton hidden, so packed
# layers run the reference matmul (.ci/run's no-Triton pass).
pytestmark = pytest.mark.no_triton


@dataclass
class SymRtnConfig:
    bits: int = 4
    group_size: int = -1
    sym: bool = True


class SymRtn(Method):
    """A method a third party might add (no YAML in conf/method): symmetric per-channel RTN."""

    name = "sym_rtn"
    Config = SymRtnConfig

    def quantize_layer(self, name: str, layer: torch.nn.Linear, spec: QuantSpec) -> LayerResult:
        qw = rtn(layer.weight.data, spec, layer=name)
        err = relative_error(layer.weight.data, qw.Q)
        layer.weight.data.copy_(qw.Q)
        return LayerResult({"err": err}, Grid(qw.scale, qw.zero))


class _ThirdParty:
    @hookimpl
    def harness_register_methods(self, register):
        register(SymRtn)


PLUGINS = make_plugins(extra=[_ThirdParty()])
CASES = [(name, ()) for name in PLUGINS.methods.names()] + [("aptq", ("ratio=0.5",))]  # + a 2/4 mix
SLOW_CASES = {("aptq", ("ratio=0.5",))}  # the 2/4 mix: the slow tier (APTQ itself stays in the fast one)


def method_cfg(tiny_cfg, name: str, extra: tuple[str, ...]) -> dict:
    if (REPO_ROOT / "conf" / "method" / f"{name}.yaml").is_file():
        return tiny_cfg(f"method={name}", "task=[wikitext2]", *extra)
    cfg = tiny_cfg("task=[wikitext2]", *extra)
    return {**cfg, "method": {"name": name}}  # a plugin's method: its Config defaults


@pytest.mark.parametrize("name,extra", [
    pytest.param(n, e, id=" ".join((n, *e)), marks=pytest.mark.slow if (n, e) in SLOW_CASES else ()) for n, e in CASES])
def test_every_method_meets_the_contract(name, extra, tiny_cfg, tmp_path):
    cls = PLUGINS.methods.get(name)
    with pytest.raises(ConfigError, match=f"method '{name}' has no option 'no_such_option'"):
        cls.from_options({"no_such_option": 1})

    cfg = method_cfg(tiny_cfg, name, extra)
    p = plan(cfg, PLUGINS)
    caps = p.method.capabilities()
    assert isinstance(caps, Capabilities) and caps.knobs == tuple(sorted(p.method.knobs))
    assert caps.packable == (caps.not_packable_because is None)
    if not caps.packable:
        with pytest.raises(ConfigError) as err:
            plan({**cfg, "pack": True}, PLUGINS)
        assert "cannot be packed" in str(err.value) and "\n" not in str(err.value)
        assert caps.not_packable_because in str(err.value)

    m = load(p)
    layers = linear_layers(m.model)
    before = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    run = RunContext(run_id=p.run_id, config=cfg, results_dir=p.results_dir, identity=p.identity)
    quant, grids, _ = quantize(p, m, run)
    changed = {n for n, layer in layers.items() if not torch.equal(layer.weight, before[n])}
    assert changed == (set(layers) if caps.quantizes else set())

    bits, with_overhead = quant["avg_bits"], quant["avg_bits_with_overhead"]
    assert 1 <= bits <= with_overhead <= 16.5
    assert (bits < 16) == caps.quantizes
    assert set(quant["bit_plan"].values()) <= set(caps.bit_widths)
    if caps.quantizes:
        assert caps.bit_widths and math.isclose(sum(quant["bits_fraction"].values()), 1.0)
        assert caps.mixed_precision or len(set(quant["bit_plan"].values())) == 1
    for info in quant["layers"].values():
        assert math.isfinite(info["err"]) and info["err"] >= 0
    assert set(quant["layers"]) == (set(layers) if caps.quantizes else set())

    assert (set(grids) == set(layers)) == caps.packable  # a grid for every layer exactly when packable
    if caps.packable:
        pack(dataclasses.replace(p, pack=True), m, quant, grids)
        assert quant["measured"]["packed_layers"] == len(layers)
        assert quant["parity"]["max_abs_logit_err"] < 1e-3

    metrics = evaluate(p, m, run)
    record = make_record(p, m, run, quant, None, metrics, None)
    assert readable(record) is None and record["capabilities"]["packable"] == caps.packable
    write_atomic(record_path(p.results_dir, p.run_id), record)
    (loaded,) = load_records(p.results_dir)
    (table,) = build_tables([loaded], declared={}).values()  # the record alone says how to show itself
    (row,) = table.rows
    assert row[0] == record["method"]["label"] and row[1] == round(bits, 3)
    (col,) = table.columns
    assert col.name == "wikitext2 ppl" and col.lower_is_better and row[2][col].value == metrics["wikitext2"]["ppl"]


def test_each_capability_refusal_is_one_line_before_loading(tiny_cfg, monkeypatch):
    """Impossible combinations stop at plan time; ``load_model`` is never reached."""
    import harness.run as R

    monkeypatch.setattr(R, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cases = {
        ("method=owq", "pack=true"): "OWQ 4.01 cannot be packed: fp16 weak columns",
        ("method=pbllm", "save=true"): "cannot be packed: binarized weights",
        ("method=awq", "save=true", "save_format=gptq"): "save_format=gptq: AWQ's per-input-channel activation",
        ("method=awq", "method.solver=gptq", "act_order=true", "group_size=32", "pack=true"):
            "act_order with dynamic groups",
        ("method=fp16", "pack=true"): "leaves the model as is",
        ("method=rtn", "bits=3", "pack=true"): "bits=3 cannot be packed",
        ("method=gptq", "act_order=true", "group_size=32", "pack=true"): "act_order with dynamic groups",
        ("method=rtn", "group_size=48"): "group_size=48 does not divide in_features=64 (hidden_size of tiny-llama)",
        ("method=rtn", "device=tpu"): "device='tpu' is unknown; use auto, cpu, cuda or cuda:N",
        ("method=rtn", "device=cuda:x"): "device='cuda:x' is unknown",
        ("method=rtn", "pack=yes"): "pack='yes' must be true or false",
    }
    if not torch.cuda.is_available():
        cases[("method=rtn", "device=cuda")] = "no CUDA device is available"
    for overrides, message in cases.items():
        with pytest.raises(ConfigError) as err:
            R.execute(tiny_cfg(*overrides))
        assert message in str(err.value) and "\n" not in str(err.value), (overrides, str(err.value))


def test_group_size_is_checked_against_the_default_models_config_without_loading_it(compose_cfg, monkeypatch):
    import harness.run as R

    monkeypatch.setattr(R, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"group_size=128 does not divide in_features=576 \(hidden_size of "
                                          r"SmolLM2-135M-Instruct\); use a divisor of every layer's width \(e.g. 64\)"):
        R.execute(compose_cfg(["method=rtn", "group_size=128", "wandb.mode=disabled"]))
