"""A GGUF model and its vocabulary through llama-cpp-python's low-level (ctypes) API.

The batching engine needs one context holding several sequences, which ``llama_cpp.Llama`` cannot
give (it owns a single-sequence context and batch), so the model is loaded with the C calls directly.
This module holds what does not depend on a context: loading, metadata, tokenizing and token text.
Token pieces are cached because the same few thousand tokens recur in every completion and a ctypes
round trip per generated token is avoidable.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from devserver.errors import BackendError


def llama_cpp_module() -> Any:
    """``llama_cpp`` imported on demand, so the rest of kit-dev runs where it is not installed."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendError("llama-cpp-python is not installed", hint="pip install 'kit-dev[llama]'") from exc
    return llama_cpp


class GgufModel:
    """Weights and vocabulary of one GGUF; shared by the context and every adapter."""

    def __init__(self, path: Path, n_gpu_layers: int) -> None:
        lib = llama_cpp_module()
        from llama_cpp import _logger

        _logger.set_verbose(False)  # llama.cpp's own log lines only on errors, as Llama(verbose=False)
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise BackendError(f"llama.cpp could not load {path.name}", hint="is it a complete GGUF file?")
        self.lib = lib
        self.path = path
        self.model = model
        self.vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        self.eos = int(lib.llama_vocab_eos(self.vocab))
        self.bos = int(lib.llama_vocab_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._piece_buffer = ctypes.create_string_buffer(256)

    def metadata(self, key: str) -> str | None:
        """A string value from the GGUF header (``None`` if absent)."""
        size = self.lib.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        self.lib.llama_model_meta_val_str(self.model, key.encode(), buffer, size + 1)
        return buffer.value.decode("utf-8", "replace")

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        """Tokens of ``text`` with special tokens parsed (chat templates carry them as text)."""
        data = text.encode("utf-8")
        capacity = len(data) + 2
        tokens = (self.lib.llama_token * capacity)()
        count = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_bos, True)
        if count < 0:  # cannot happen with one slot per byte plus BOS, but the API reports it this way
            tokens = (self.lib.llama_token * -count)()
            count = self.lib.llama_tokenize(self.vocab, data, len(data), tokens, -count, add_bos, True)
        return list(tokens[:count])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for; special tokens are empty, as in ``Llama.detokenize``."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = self._piece_buffer
            size = self.lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = self.lib.llama_token_to_piece(self.vocab, token, buffer, -size, 0, False)
            cached = self._pieces[token] = buffer.raw[:size]
        return cached

    def token_text(self, token: int) -> str:
        """The vocabulary's text for a token (special tokens included), for template variables."""
        if token < 0:
            return ""
        return bytes(self.lib.llama_vocab_get_text(self.vocab, token)).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        """End of generation (EOS, EOT, …); cached like ``piece``."""
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self.lib.llama_vocab_is_eog(self.vocab, token))
        return eog

    def close(self) -> None:
        """Free the weights (and every adapter still attached to them). Idempotent."""
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None
