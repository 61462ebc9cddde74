"""Equal storage: bytes per weight in the record's summary, and rows lined up at a byte budget."""
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.quantize.driver import summarize
from harness.quantize.primitives import QuantSpec
from harness.results.records import load_records
from harness.results.tables import Selection, build_tables, bytes_per_weight

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_summary_bytes_count_everything_stored():
    layers = {"a": nn.Linear(128, 64, bias=False), "b": nn.Linear(128, 64, bias=False)}
    specs = {"a": QuantSpec(3, 64)}  # b stays in fp16
    info = {"a": {"bits_per_weight": 3.0, "bits_per_weight_with_overhead": 3.5}}  # e.g. grids and a width map
    q = summarize(layers, specs, info)
    assert q["bytes_per_weight"] == pytest.approx((3.5 + 16) / 2 / 8)
    assert q["linear_bytes"] == pytest.approx(64 * 128 * (3.5 + 16) / 8)
    assert bytes_per_weight(q) == q["bytes_per_weight"]
    assert bytes_per_weight({"avg_bits": 4.0, "avg_bits_with_overhead": 4.3125}) == 4.3125 / 8  # older records


def test_slim_and_gptq_at_3_bits_store_the_same_bytes_within_the_width_map():
    """SliM 3.0 g64 and GPTQ-3 g64 on a SmolLM2 shape: the same codes and grids on average; SliM adds the map."""
    from methods.slim import Slim, layer_bits

    cfg = Slim.default_config(target_bits=3, group_size=64)
    widths = torch.tensor([2, 4, 3, 3, 3, 2, 4, 3, 3])  # 9 groups of a 576-wide layer
    _, over = layer_bits(widths, (576, 576), cfg)
    gptq = 3 + QuantSpec(3, 64).overhead_bits(576)
    assert over - gptq == pytest.approx(9 * 2 / (576 * 576))  # exactly the width map's bits


def test_a_byte_budget_keeps_the_rows_that_fit_and_orders_by_bytes():
    recs = load_records(FIXTURES)
    budget = 3.9 / 8
    ((_, table),) = build_tables(recs, selection=Selection(order="bytes", max_bytes=budget)).items()
    effs = [table.meta[(label, bits)].effective_bits for label, bits, _ in table.rows]
    assert effs and max(effs) <= 3.9 and effs == sorted(effs, reverse=True)
    kept = {r["run_id"] for row in table.meta.values() for r in row.records}
    dropped = [r for r in recs if r["run_id"] not in kept]
    assert dropped and all(bytes_per_weight(r["quantization"]) > budget for r in dropped)


def test_a_published_rows_block_shows_bytes_and_quantize_time_against_a_reference():
    from harness.results.published import Context, rows_block

    recs = load_records(FIXTURES)
    ctx = Context(FIXTURES, recs)
    gptq = next(r for r in recs if r["method"]["label"] == "GPTQ g64 act ts" and r["quantization"]["avg_bits"] == 4)
    sel = f"GPTQ g64 act ts@run={gptq['run_id'][-10:]}"
    text = rows_block({"rows": [{"name": "G", "select": sel}], "bytes": True, "time_vs": sel}, ctx)
    header, _, row = text.splitlines()[:3]
    assert header == "| method | bits / effective | bytes / weight | WikiText-2 | C4 | quantize time (× ref) |"
    assert f"| {bytes_per_weight(gptq['quantization']):.3f} |" in row and row.endswith("(1.00×) |")
