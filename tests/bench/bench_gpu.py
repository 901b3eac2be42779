"""Real-shape generation benchmark (issue 8): Llama-3.2-11B-Vision-Instruct's shape with random weights.

Builds a `MllamaConfig` equal to the real model's (40 text layers, cross-attention at 3, 8, ..., 38, hidden
4096, 32 / 8 heads, vocab 128256 + 8; vision 32 + 8 layers, hidden 1280, 560 px tiles, up to 4) with random
bf16 weights created directly on the device (nothing is downloaded), and drives it through the server's own
generation code (`VisionModel.stream`: the workers' processor, batching and generate path) with a 4-tile
diagram and greedy decoding forced to a fixed number of new tokens (EOS logits zeroed).

Measures time to first token (one 4-tile image), decode tokens/s at batch 1, aggregate tokens/s at each
batch, the bandwidth ceiling (bytes of weights read per decode step / device-to-device copy bandwidth measured
in the same run) and peak GPU memory. Prints a table last.

    python tests/bench/bench_gpu.py                                  # cuda, full shape (make bench-gpu)
    python tests/bench/bench_gpu.py --device cpu --scale small       # the same code on a CPU, in minutes
    python tests/bench/bench_gpu.py --compile                        # static KV cache + torch.compile
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.checkpoints.mllama import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer
from tests.conftest import diagram_png

QUESTION = "Describe every component of this architecture diagram and how they connect."
REAL_TEXT_VOCAB = 128256


def shape(scale: str) -> dict:
    if scale == "full":  # Llama-3.2-11B-Vision-Instruct's config.json
        return {
            "text": {
                "hidden_size": 4096,
                "num_hidden_layers": 40,
                "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "intermediate_size": 14336,
                "rope_theta": 500000.0,
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
                "max_position_embeddings": 131072,
                "rms_norm_eps": 1e-5,
            },
            "vision": {
                "hidden_size": 1280,
                "num_hidden_layers": 32,
                "num_global_layers": 8,
                "attention_heads": 16,
                "intermediate_size": 5120,
                "image_size": 560,
                "patch_size": 14,
                "max_num_tiles": 4,
                "intermediate_layers_indices": [3, 7, 15, 23, 30],
                "vision_output_dim": 7680,
            },
            "vocab": REAL_TEXT_VOCAB,
        }
    return {  # small: the same structure shrunk to run on a CPU
        "text": {
            "hidden_size": 256,
            "num_hidden_layers": 8,
            "cross_attention_layers": [3, 7],
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "intermediate_size": 896,
            "max_position_embeddings": 4096,
        },
        "vision": {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_global_layers": 2,
            "attention_heads": 4,
            "intermediate_size": 512,
            "image_size": 56,
            "patch_size": 14,
            "max_num_tiles": 4,
            "intermediate_layers_indices": [1, 3],
            "vision_output_dim": 384,
        },
        "vocab": None,  # the test tokenizer's own
    }


def build(scale: str, device: str):
    """(VisionModel, weights bytes read per decode step, parameter count) with random weights made on `device`."""
    import torch
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    s = shape(scale)
    base_vocab = len(build_tokenizer()) - 1
    tokenizer = build_tokenizer(extra_words=(s["vocab"] - base_vocab) if s["vocab"] else 0)
    text_vocab = len(tokenizer) - 1  # <|image|> comes last, as in the real checkpoint
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")]
    config = MllamaConfig(
        text_config={
            **s["text"],
            "vocab_size": text_vocab,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos_ids,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=s["vision"],
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = MllamaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    with torch.no_grad():  # no EOS ever: every answer runs to the fixed number of new tokens
        specials = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        model.get_output_embeddings().weight[specials] = 0.0
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    size = s["vision"]["image_size"]
    processor = MllamaProcessor(
        image_processor=MllamaImageProcessor(
            size={"height": size, "width": size}, max_image_tiles=4, do_convert_rgb=True
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    params = sum(p.numel() for p in model.parameters())
    return model, processor, decode_bytes(model), params


def decode_bytes(model) -> int:
    """Bytes of weights one decode step reads: the text model and lm_head, without the embedding table (one
    row is read) and without the cross-attention K/V projections (their output is cached at prefill)."""
    total = 0
    for name, p in model.named_parameters():
        if "vision_model" in name or "multi_modal_projector" in name or "embed_tokens" in name:
            continue
        if "cross_attn.k_proj" in name or "cross_attn.v_proj" in name:
            continue
        total += p.numel() * p.element_size()
    return total


def copy_bandwidth(device: str) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    import torch

    n = (1 << 30) if device == "cuda" else (256 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(10):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * n / min(times)


@dataclass
class Measure:
    batch: int
    first_token_s: float  # from the call to the first token of every row (prefill, vision included)
    total_s: float
    new_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:  # after the first token
        return self.batch * (self.new_tokens - 1) / (self.total_s - self.first_token_s)

    @property
    def aggregate_tokens_per_s(self) -> float:  # whole answers, prefill included
        return self.batch * self.new_tokens / self.total_s


def run_once(vm, batch: int, new_tokens: int, image_px: int, device: str) -> Measure:
    import io

    import torch
    from PIL import Image

    from visionrag.server.generation import GenerationRequest, Sampling

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    requests = [
        GenerationRequest(
            messages,
            Image.open(io.BytesIO(diagram_png(i, size=(image_px, image_px)))),
            Sampling(max_tokens=new_tokens),
        )
        for i in range(batch)
    ]
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    first = None
    counts = [0] * batch
    for step in vm.stream(requests):
        if first is None:
            first = time.perf_counter() - started
        for i, delta in enumerate(step):
            if delta is not None and delta.done:
                counts[i] = delta.completion_tokens
    total = time.perf_counter() - started
    assert counts == [new_tokens] * batch, f"rows stopped early: {counts}"
    return Measure(batch, first or total, total, new_tokens)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    p.add_argument(
        "--scale", choices=["full", "small"], default=None, help="default: full on cuda, small on cpu"
    )
    p.add_argument("--new-tokens", type=int, default=None, help="default: 128 (full), 32 (small)")
    p.add_argument("--batches", default="1,4,8,16", help="comma list of concurrent requests")
    p.add_argument("--repeats", type=int, default=2, help="measured runs per batch (after one warm-up)")
    p.add_argument("--compile", action="store_true", help="static KV cache (+ torch.compile on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on cpu")
    args = p.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    scale = args.scale or ("full" if device == "cuda" else "small")
    new_tokens = args.new_tokens or (128 if scale == "full" else 32)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    print(f"device: {name}; torch {torch.__version__}; scale {scale}; {new_tokens} new tokens", flush=True)

    from visionrag.server.generation import VisionModel

    t0 = time.perf_counter()
    model, processor, weight_bytes, params = build(scale, device)
    vm = VisionModel(model, processor, f"random-{scale}", compile=args.compile)
    print(f"built {params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.1f} s", flush=True)
    bandwidth = copy_bandwidth(device)
    image_px = 2 * shape(scale)["vision"]["image_size"]  # 2 x 2 tiles

    rows: list[tuple[int, list[Measure], float | None]] = []
    for batch in batches:
        run_once(vm, batch, new_tokens, image_px, device)  # warm-up (and compilation with --compile)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        runs = [run_once(vm, batch, new_tokens, image_px, device) for _ in range(args.repeats)]
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append((batch, runs, peak))
        m = statistics.median(r.decode_tokens_per_s for r in runs)
        print(
            f"  batch {batch:3d}: decode {m:9.2f} tokens/s, first token {runs[0].first_token_s:.3f} s",
            flush=True,
        )

    ceiling = bandwidth / weight_bytes  # batch-1 decode steps per second if weights were read at copy speed
    print_table(args, name, scale, new_tokens, params, weight_bytes, bandwidth, ceiling, rows, cuda)
    return 0


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else f"{med:{fmt}}"


def print_table(args, name, scale, new_tokens, params, weight_bytes, bandwidth, ceiling, rows, cuda) -> None:
    base = next(
        (statistics.median(r.decode_tokens_per_s for r in runs) for b, runs, _ in rows if b == 1), None
    )
    print()
    print(
        f"## {name}, scale {scale} ({params / 1e9:.2f} B parameters), {new_tokens} new tokens, greedy, "
        f"4-tile image, {'static cache + compile' if args.compile else 'dynamic cache'}; "
        f"median (min-max) of {args.repeats} runs"
    )
    print()
    print(
        "| concurrent requests | time to first token s | decode tokens/s | aggregate tokens/s (with prefill) "
        "| x batch 1 | peak GPU memory GiB |"
    )
    print("|---|---|---|---|---|---|")
    for batch, runs, peak in rows:
        decode = [r.decode_tokens_per_s for r in runs]
        ratio = f"{statistics.median(decode) / base:.2f}" if base else "-"
        print(
            f"| {batch} | {_spread([r.first_token_s for r in runs], '.3f')} | {_spread(decode, '.1f')} "
            f"| {_spread([r.aggregate_tokens_per_s for r in runs], '.1f')} | {ratio} "
            f"| {f'{peak:.1f}' if peak is not None else 'n/a (cpu)'} |"
        )
    print()
    kind = "device-to-device copy" if cuda else "memcpy (CPU)"
    print(
        f"weights read per decode step: {weight_bytes / 1e9:.3f} GB; {kind} bandwidth: {bandwidth / 1e9:.1f} GB/s"
    )
    line = f"ceiling at batch 1: {ceiling:.1f} tokens/s"
    if base:
        line += f"; measured batch 1: {base:.1f} tokens/s = {100 * base / ceiling:.0f}% of the ceiling"
    print(line)
    if not cuda:
        print("(cpu: the bandwidth is a memcpy bandwidth and GPU memory is not measured)")


if __name__ == "__main__":
    sys.exit(main())
