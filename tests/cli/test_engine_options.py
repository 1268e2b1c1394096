"""Engine settings reach the backend: flags first, then the Kitfile's parameters, then defaults."""

from __future__ import annotations

import pytest

from backends.select import EngineOptions
from devserver.cli import build_parser, settings_from
from devserver.errors import UsageError
from devserver.launch import engine_options


def options_for(argv: list[str], parameters: object = None) -> EngineOptions:
    return engine_options(settings_from(build_parser().parse_args(["start", "./m", *argv])), parameters)


def test_flags_win_over_kitfile_parameters() -> None:
    argv = ["--ctx-size", "512", "--parallel", "2", "--prompt-cache-mib", "0", "--flash-attn", "off"]
    options = options_for(argv, {"ctx_size": 1024})
    assert (options.ctx_size, options.parallel, options.prompt_cache_mib, options.flash_attn) == (512, 2, 0, "off")


def test_kitfile_parameters_then_defaults() -> None:
    options = options_for([], {"n_ctx": 1024, "ngl": 0, "threads": "two"})  # a non-integer is ignored
    assert (options.ctx_size, options.n_gpu_layers, options.threads) == (1024, 0, None)
    assert (options.parallel, options.prompt_cache_mib, options.flash_attn) == (None, 512, "auto")


def test_an_out_of_range_flag_is_one_line_naming_flag_and_env() -> None:
    with pytest.raises(UsageError) as refused:
        options_for(["--prompt-cache-mib", "-1"])
    expected = "--prompt-cache-mib (env KIT_DEV_PROMPT_CACHE_MIB): input should be greater than or equal to 0, got -1"
    assert refused.value.one_line() == expected
