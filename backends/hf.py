"""safetensors (and, when allowed, pickle) models through transformers + torch, with PEFT LoRA adapters.

``load`` reads the model directory offline (no hub, ever), in bfloat16 on CUDA and float32 on the CPU
(CPU bfloat16 matmuls are slow and lose the parity with llama.cpp that tests rely on). Requests that
arrive together are decoded together: ``generate`` tokenizes, queues a ``Row`` with the batcher
(``backends.hf_batching``), whose thread runs left-padded batches of up to ``--parallel`` rows
(``backends.hf_decode``, each row sampling with its own settings and seed, ``backends.hf_logits``),
and then streams its own row's tokens back. The text is ours, on the request's own thread:
incremental UTF-8-safe decoding, stop strings via ``backends.stopping``, cancellation within a token.

Adapters are loaded once, at start, into one ``PeftModel``; a batch holds the requests of one adapter,
picked by name (``set_adapter``) or none (``disable_adapter``) for the batch, so switching costs nothing.

Only this module and ``backends.hf_*`` import torch/transformers/peft, and they import nothing from
``devserver.server``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.base import (
    AdapterInfo,
    BackendInfo,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Timings,
    TokenEvent,
    TopLogprob,
)
from backends.hf_batching import Batcher
from backends.hf_decode import BatchDecoder, Ended, Row, first_line
from backends.hf_logits import Choice
from backends.model_files import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, safetensors_header
from backends.select import AdapterSpec, BackendChoice, EngineOptions
from backends.stopping import StopMatcher
from devserver.errors import BackendError, ContextLengthExceeded, InvalidRequest

DEFAULT_PARALLEL = 4  # rows per batch when --parallel is not given
POLL_S = 0.05  # how often a request still waiting for its batch checks whether it was cancelled


def _import_engine() -> tuple[Any, Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: kit-dev never calls the hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise BackendError("torch and transformers are not installed", hint="pip install 'kit-dev[hf]'") from exc
    return torch, transformers


def load(choice: BackendChoice, options: EngineOptions) -> HFBackend:
    """Load the model directory ``choice.model_path`` and its PEFT adapters; ``BackendError`` if not."""
    torch, transformers = _import_engine()
    directory = choice.model_path
    use_safetensors = _check_model_dir(directory, options)
    adapter_safetensors = [_check_adapter_files(spec, options) for spec in choice.adapters]
    device = choice.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if options.threads:
        torch.set_num_threads(options.threads)
    transformers.utils.logging.disable_progress_bar()  # a server log is no terminal
    common = {"local_files_only": True, "trust_remote_code": options.trust_remote_code}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **common)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, use_safetensors=use_safetensors, **common
        )
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
        raise BackendError(f"transformers could not load {directory.name}: {first_line(exc)}") from exc
    model.to(device)
    # Decoding settings come only from each request: a checkpoint's generation_config.json (its own
    # temperature, top_k, min_p...) would otherwise fill every value a request leaves unset.
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
    )
    model.eval()
    if choice.adapters:
        model = _load_adapters(model, choice.adapters, adapter_safetensors)
        model.to(device)
    context = options.ctx_size or _context_size(model, tokenizer)
    parallel = options.parallel or DEFAULT_PARALLEL
    info = BackendInfo(
        name="transformers",
        device=device,
        model_file=str(directory),
        context_size=context,
        max_concurrency=parallel,
        vocab_size=model.get_output_embeddings().weight.shape[0],  # the logits' width, not the tokenizer's
        adapters=tuple(AdapterInfo(a.name, str(a.path), "peft-lora") for a in choice.adapters),
        reasons=choice.reasons,
        extra={
            "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "parallel": parallel,
        },
    )
    return HFBackend(model, tokenizer, info)


def _check_model_dir(directory: Path, options: EngineOptions) -> bool:
    """Refuse what would run code we were not allowed to run; return ``use_safetensors``."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackendError(f"{directory}/config.json is missing or not JSON: {exc}") from exc
    if isinstance(config, dict) and config.get("auto_map") and not options.trust_remote_code:
        raise BackendError(
            f"{directory.name} ships its own Python code (config.json auto_map)",
            hint="pass --trust-remote-code if you trust this ModelKit",
        )
    if any(True for s in SAFETENSORS_SUFFIXES for _ in directory.glob(f"*{s}")):
        return True
    pickles = sorted(p.name for s in PICKLE_SUFFIXES for p in directory.glob(f"*{s}"))
    if not pickles:
        raise BackendError(f"{directory} has no *.safetensors or *.bin weights")
    if not options.allow_pickle:
        raise BackendError(
            f"the weights ({', '.join(pickles)}) are Python pickles, which can run code when loaded",
            hint="pass --allow-pickle if you trust this ModelKit, or ship safetensors",
        )
    return False


def _load_adapters(model: Any, adapters: tuple[AdapterSpec, ...], safetensors: list[bool]) -> Any:
    """Every adapter into one PeftModel, each checked against the base first so a wrong one is named."""
    from peft import PeftModel

    peft_model = None
    for spec, weights in zip(adapters, safetensors, strict=True):
        if weights:
            _check_adapter_fits(model, spec)
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(
                    model, spec.path, adapter_name=spec.name, is_trainable=False, use_safetensors=weights
                )
            else:
                peft_model.load_adapter(spec.path, adapter_name=spec.name, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise BackendError(f"part {spec.name!r} ({spec.path}) could not be loaded: {first_line(exc)}") from exc
    assert peft_model is not None
    peft_model.eval()
    return peft_model


def _check_adapter_files(spec: AdapterSpec, options: EngineOptions) -> bool:
    """The adapter's files are there (checked before the slow model load); return ``use_safetensors``."""
    label = f"part {spec.name!r} ({spec.path})"
    if not (spec.path / "adapter_config.json").is_file():
        raise BackendError(f"{label} has no adapter_config.json")
    weights, pickle = spec.path / "adapter_model.safetensors", spec.path / "adapter_model.bin"
    if not weights.is_file():
        if pickle.is_file() and options.allow_pickle:
            return False
        hint = "pass --allow-pickle to load adapter_model.bin" if pickle.is_file() else None
        raise BackendError(f"{label} has no adapter_model.safetensors", hint=hint)
    return True


def _check_adapter_fits(model: Any, spec: AdapterSpec) -> None:
    """Every LoRA matrix adapts a module this base has, with matching features, so that an adapter
    trained for another base fails here with its part's name rather than deep inside PEFT."""
    label = f"part {spec.name!r} ({spec.path})"
    try:
        header = safetensors_header(spec.path / "adapter_model.safetensors")
    except (OSError, ValueError) as exc:
        raise BackendError(f"{label}: adapter_model.safetensors is unreadable: {exc}") from exc
    for key, entry in header.items():
        module_name, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if not kind:
            continue
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise BackendError(
                f"{label} adapts {module_name}, which this base model does not have",
                hint="the adapter was trained for another base model",
            ) from None
        shape = entry.get("shape") or [None]
        if kind == "A.weight":  # lora_A is [r, in_features]
            want, got = getattr(module, "in_features", None), shape[-1]
        elif kind == "B.weight":  # lora_B is [out_features, r]
            want, got = getattr(module, "out_features", None), shape[0]
        else:
            continue
        if want is not None and got != want:
            raise BackendError(
                f"{label} has {key} of shape {shape}, but {module_name} has {want} features there",
                hint="the adapter was trained for another base model",
            )


def _context_size(model: Any, tokenizer: Any) -> int:
    config_max = getattr(model.config, "max_position_embeddings", None)
    if isinstance(config_max, int) and config_max > 0:
        return config_max
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    return tokenizer_max if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 10**7 else 2048


class HFBackend:
    """One loaded transformers model (optionally a PeftModel with named adapters); requests that arrive
    together are decoded as one batch, up to ``info.max_concurrency`` of them."""

    def __init__(self, model: Any, tokenizer: Any, info: BackendInfo) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self._device = torch.device(info.device)
        self._adapters = {a.name for a in info.adapters}
        self._peft = bool(info.adapters)  # the model is a PeftModel (adapters can be switched)
        self._eos_ids = _eos_ids(model, tokenizer)
        pad_id = model.generation_config.pad_token_id
        self._decoder = BatchDecoder(torch, self._device, self._eos_ids, pad_id or min(self._eos_ids, default=0))
        self._lock = threading.Lock()  # held by a running batch, and by whatever changes the model
        self._batcher: Batcher[Row] = Batcher(self._run_batch, self._lock, info.max_concurrency)
        self._closed = False
        self.info = info

    @property
    def chat_template(self) -> str | None:
        template = getattr(self._tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template else None

    @property
    def special_tokens(self) -> dict[str, str]:
        return {
            "bos_token": self._tokenizer.bos_token or "",
            "eos_token": self._tokenizer.eos_token or "",
        }

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, by name, what this backend cannot honour (the server asks before queueing, so the
        client gets a 400 rather than a stream that fails): constrained decoding has no well-kept
        library in this backend's dependencies, so JSON schemas and grammars are refused."""
        params = request.params
        if params.grammar or params.json_schema:
            raise InvalidRequest(
                "the transformers backend does not support constrained decoding (response_format "
                "json_object/json_schema, tool_choice 'required' or a named function); serve a GGUF "
                "model through llama.cpp for these",
                param="response_format",
            )
        if request.adapter is not None and request.adapter not in self._adapters:
            raise InvalidRequest(f"unknown adapter {request.adapter!r}", param="model")

    def load_adapter(self, name: str, path: Path) -> None:
        """Add a PEFT adapter while serving (``/v1/load_lora_adapter``), checked against the base first."""
        spec = AdapterSpec(name=name, path=Path(path), kind="peft-lora")
        weights = _check_adapter_files(spec, EngineOptions())
        with self._lock:
            if self._closed:
                raise BackendError("the model has been unloaded")
            base = self._model.get_base_model() if self._adapters or self._peft else self._model
            if weights:
                _check_adapter_fits(base, spec)
            if self._peft:
                self._model.load_adapter(spec.path, adapter_name=name, is_trainable=False)
            else:
                self._model = _load_adapters(self._model, (spec,), [weights])
                self._peft = True
            self._model.to(self._device)
            self._adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if name not in self._adapters:
                raise InvalidRequest(f"no adapter named {name!r} is loaded", param="lora_name")
            self._model.delete_adapter(name)
            self._adapters.discard(name)

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size have run (a batch of 4 means four requests decoded together)."""
        return self._batcher.batch_sizes

    def generate(self, request: GenerationRequest) -> Iterator[GenerationEvent]:
        self.check_request(request)
        if self._closed:
            raise BackendError("the model has been unloaded")
        params = request.params
        prompt = self._tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
        budget = self.info.context_size - len(prompt)
        if budget <= 0:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt)} tokens; the context holds {self.info.context_size}", param="messages"
            )
        max_tokens = budget if params.max_tokens is None else min(params.max_tokens, budget)
        row = Row(prompt, params, max_tokens, request.adapter, request.cancel)
        if max_tokens > 0:
            self._batcher.submit(row)
        else:
            row.end()
        yield from self._stream(request, row)

    def _run_batch(self, rows: list[Row]) -> None:
        """The batcher's thread, holding ``self._lock``: one batch, all of one adapter."""
        if self._closed:
            raise BackendError("the model has been unloaded")
        adapter = rows[0].adapter
        if adapter is not None and adapter not in self._adapters:
            raise BackendError(f"adapter {adapter!r} is not loaded")
        with self._adapter(adapter):
            self._decoder.run(self._model, rows)

    @contextlib.contextmanager
    def _adapter(self, name: str | None) -> Iterator[None]:
        if not self._peft:
            yield
        elif name is None:
            with self._model.disable_adapter():
                yield
        else:
            self._model.set_adapter(name)
            yield

    def _stream(self, request: GenerationRequest, row: Row) -> Iterator[GenerationEvent]:
        """``row``'s tokens as events, on the request's own thread, while the batch decodes."""
        params = request.params
        detokenizer = _Detokenizer(self._tokenizer)
        matcher = StopMatcher(params.stop)
        reason: FinishReason = "length"
        produced = 0
        first_token_at: float | None = None
        pending: list[int] = []
        logprob = 0.0
        top: tuple[TopLogprob, ...] = ()
        ended: Ended | None = None
        try:
            while True:
                item = self._next(row)
                if isinstance(item, Ended):
                    ended = item
                    break
                first_token_at = first_token_at or time.perf_counter()
                if request.cancel.is_set():
                    reason = "cancelled"
                    break
                if item.token in self._eos_ids:
                    reason = "stop"
                    break
                produced += 1
                if item.logprob is not None:
                    logprob, top = logprob + item.logprob, top or self._top_logprobs(item)
                pending.append(item.token)
                text = matcher.feed(detokenizer.push(item.token))
                if text:
                    if item.logprob is None:
                        yield TokenEvent(text=text, token_ids=tuple(pending))
                    else:  # held-back tokens released together: their joint logprob, the first's alternatives
                        yield TokenEvent(text=text, token_ids=tuple(pending), logprob=logprob, top_logprobs=top)
                        logprob, top = 0.0, ()
                    pending.clear()
                if matcher.stopped:
                    reason = "stop"
                    break
        finally:
            row.halt.set()  # also when the consumer walks away mid-stream (GeneratorExit)
            self._batcher.withdraw(row)
        if ended is not None and ended.error is not None:
            yield FinishEvent("error", len(row.prompt), produced, error=ended.error)
            return
        if ended is not None and request.cancel.is_set():
            reason = "cancelled"
        if reason != "cancelled" and not matcher.stopped:
            tail = matcher.feed(detokenizer.flush()) + matcher.flush()
            if tail:
                yield TokenEvent(text=tail, token_ids=tuple(pending))
        end = time.perf_counter()
        started = row.started_at or end
        first = first_token_at or end
        yield FinishEvent(
            reason=reason,
            prompt_tokens=len(row.prompt),
            completion_tokens=produced,
            timings=Timings(queue_s=started - row.submitted_at, prefill_s=first - started, decode_s=end - first),
        )

    def _next(self, row: Row) -> Choice | Ended:
        """The row's next item; a cancelled row that is still waiting for its batch leaves the queue."""
        while True:
            try:
                return row.out.get(timeout=POLL_S)
            except queue.Empty:
                if row.cancel.is_set() and self._batcher.withdraw(row):
                    return Ended()

    def _top_logprobs(self, choice: Choice) -> tuple[TopLogprob, ...]:
        texts = [(self._token_text(token), logprob) for token, logprob in choice.top]
        return tuple(TopLogprob(text, logprob, list(text.encode())) for text, logprob in texts if text)

    def _token_text(self, token: int) -> str:
        text: str = self._tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text

    def close(self) -> None:
        with self._lock:  # between batches
            if self._closed:
                return
            self._closed = True
            self._model = None
            if self._device.type == "cuda":
                self._torch.cuda.empty_cache()
        self._batcher.close()


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a turn: the generation config's (int or list) and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if isinstance(i, int))


class _Detokenizer:
    """Incremental decoding that emits only whole characters.

    Byte-level tokens can split a UTF-8 character; decoding a window of recent tokens and holding back
    text that ends in U+FFFD (an incomplete character) gives the same text as decoding everything at
    the end, at O(window) per token instead of O(n).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are already fully emitted
        self._read = 0  # tokens whose text has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self._ids.append(token)
        done = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(done) :]

    def flush(self) -> str:
        """What is left at the end; a character cut off by max_tokens is dropped, as llama.cpp does."""
        done = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :].removesuffix("\ufffd")
