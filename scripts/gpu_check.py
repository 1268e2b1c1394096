#!/usr/bin/env python3
"""GPU check for the transformers backend, for a machine with an NVIDIA GPU: CUDA against CPU.

Builds a model of SmolLM2-135M's shape (its config.json, below) with random weights and a word-level
tokenizer of the same vocabulary size, so nothing is downloaded and no fixture is needed, then drives
``backends.hf`` exactly as the server does on ``cuda:0`` (bfloat16) and on the CPU (float32) and
prints tokens/s for both. Needs only torch + transformers (and this repository).

Usage: python scripts/gpu_check.py [--tokens 128] [--runs 3]
Exit status: 0 when CUDA generated at least as many tokens as asked, 1 otherwise, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends import hf
from backends.base import GenerationRequest, SamplingParams, collect
from backends.select import BackendChoice, EngineOptions

# HuggingFaceTB/SmolLM2-135M-Instruct's architecture (config.json), weights excepted.
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def build_model(directory: Path) -> None:
    """Random-weight SmolLM2-shaped model + a word-level tokenizer ("w0".."w49151") in ``directory``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="w1", eos_token="w2", pad_token="w2")
    tokenizer.save_pretrained(directory)


def measure(directory: Path, device: str, tokens: int, runs: int) -> tuple[list[float], float, str]:
    """Median-able tokens/s over ``runs`` greedy generations of ``tokens`` tokens, after a warm-up."""
    backend = hf.load(BackendChoice("transformers", device, directory, (), ("gpu_check",)), EngineOptions())
    try:
        prompt = " ".join(f"w{i}" for i in range(100, 164))  # 64 prompt tokens
        params = SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias={2: -100.0})  # never stop early
        collect(backend.generate(GenerationRequest("warm-up", prompt, SamplingParams(max_tokens=4, temperature=0))))
        rates, first_token = [], 0.0
        for run in range(runs):
            start = time.perf_counter()
            _, finish = collect(backend.generate(GenerationRequest(f"run-{run}", prompt, params)))
            rates.append(finish.completion_tokens / (time.perf_counter() - start))
            first_token = finish.timings.prefill_s or 0.0
            if finish.completion_tokens != tokens:
                raise SystemExit(f"{device}: {finish.completion_tokens} tokens instead of {tokens} ({finish.reason})")
        return rates, first_token, backend.info.extra["dtype"]
    finally:
        backend.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch; nothing to check")
        return 2
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory(prefix="kitdev-gpu-check-") as tmp:
        start = time.perf_counter()
        build_model(Path(tmp))
        print(f"built a random SmolLM2-135M-shaped model in {time.perf_counter() - start:.1f}s")
        results = {}
        for device, runs in (("cuda:0", args.runs), ("cpu", 1)):
            rates, first, dtype = measure(Path(tmp), device, args.tokens, runs)
            results[device] = statistics.median(rates)
            print(
                f"{device:7s} {dtype:9s} {statistics.median(rates):8.1f} tokens/s "
                f"(runs: {', '.join(f'{r:.1f}' for r in rates)}; first token {first * 1000:.0f} ms)"
            )
    print(f"cuda/cpu speed-up: {results['cuda:0'] / results['cpu']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
