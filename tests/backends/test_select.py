"""Backend selection as a table: small fake model directories with real file magics, fake hardware."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from backends.gguf_meta import GGUFHeaderError, read_metadata
from backends.hardware import Hardware
from backends.select import EngineOptions, PartInfo, choose_backend
from devserver.errors import BackendError

CPU = Hardware(cpu_count=2)
CUDA = Hardware(cuda_devices=("NVIDIA H100 (80 GiB)",), llama_gpu_offload=True, cpu_count=16)
CUDA_TORCH_ONLY = Hardware(cuda_devices=("NVIDIA H100 (80 GiB)",), cpu_count=16)
METAL = Hardware(metal=True, llama_gpu_offload=True, cpu_count=8)


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, gtype: str = "model", arch: str = "llama") -> Path:
    """A header-only GGUF v3: a string array (like a vocabulary) first, so the reader must skip it."""
    kvs = [
        _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _gguf_string("a") + _gguf_string("b"),
        _gguf_string("general.alignment") + struct.pack("<II", 4, 32),
        _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(arch),
        _gguf_string("general.type") + struct.pack("<I", 8) + _gguf_string(gtype),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return path


def write_hf(directory: Path, weights: str = "model.safetensors", params: int = 135_000_000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if weights.endswith(".safetensors"):
        header = json.dumps({"w": {"dtype": "F32", "shape": [params], "data_offsets": [0, 0]}}).encode()
        (directory / weights).write_bytes(struct.pack("<Q", len(header)) + header)
    else:
        (directory / weights).write_bytes(b"\x80\x04PK fake pickle")
    return directory


def write_peft(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (directory / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    return directory


# ---- GGUF → llama.cpp --------------------------------------------------------------------------


def test_gguf_on_cpu_is_llamacpp_without_offload(tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "m.gguf")
    choice = choose_backend(tmp_path, hw=CPU)
    assert (choice.backend, choice.device, choice.model_path, choice.n_gpu_layers) == ("llama.cpp", "cpu", gguf, 0)
    assert any("llama.cpp" in r for r in choice.reasons)


@pytest.mark.parametrize(("hw", "device"), [(CUDA, "cuda:0"), (METAL, "metal")])
def test_gguf_offloads_every_layer_when_the_build_can(tmp_path: Path, hw: Hardware, device: str) -> None:
    write_gguf(tmp_path / "m.gguf")
    choice = choose_backend(tmp_path, hw=hw)
    assert (choice.device, choice.n_gpu_layers) == (device, -1)
    assert choose_backend(tmp_path, hw=hw, options=EngineOptions(n_gpu_layers=12)).n_gpu_layers == 12
    assert choose_backend(tmp_path, hw=hw, device="cpu").n_gpu_layers == 0


def test_cuda_seen_by_torch_but_llamacpp_cpu_build_stays_on_cpu(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    assert choose_backend(tmp_path, hw=CUDA_TORCH_ONLY).device == "cpu"
    with pytest.raises(BackendError, match="without GPU support") as err:
        choose_backend(tmp_path, hw=CUDA_TORCH_ONLY, device="cuda")
    assert "GGML_CUDA" in err.value.one_line()


def test_metal_device_needs_apple_silicon(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    with pytest.raises(BackendError, match="Apple silicon"):
        choose_backend(tmp_path, hw=CUDA, device="metal")


def test_model_path_naming_a_file_wins_over_other_ggufs(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a.gguf")
    b = write_gguf(tmp_path / "b.gguf")
    assert choose_backend(b, hw=CPU).model_path == b


def test_several_ggufs_need_model_file(tmp_path: Path) -> None:
    write_gguf(tmp_path / "a.Q4.gguf")
    q8 = write_gguf(tmp_path / "sub" / "a.Q8.gguf")
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path, hw=CPU)
    line = err.value.one_line()
    assert "a.Q4.gguf" in line and "sub/a.Q8.gguf" in line and "--model-file" in line
    assert choose_backend(tmp_path, hw=CPU, options=EngineOptions(model_file="a.Q8.gguf")).model_path == q8
    with pytest.raises(BackendError, match="not among"):
        choose_backend(tmp_path, hw=CPU, options=EngineOptions(model_file="nope.gguf"))


def test_split_gguf_loads_from_its_first_shard(tmp_path: Path) -> None:
    first = write_gguf(tmp_path / "big-00001-of-00003.gguf")
    write_gguf(tmp_path / "big-00002-of-00003.gguf")
    third = write_gguf(tmp_path / "big-00003-of-00003.gguf")
    assert choose_backend(tmp_path, hw=CPU).model_path == first
    assert choose_backend(third, hw=CPU).model_path == first
    third.unlink()
    with pytest.raises(BackendError, match=r"big-00003-of-00003\.gguf"):
        choose_backend(tmp_path, hw=CPU)


# ---- safetensors / pickle → transformers ---------------------------------------------------------


def test_safetensors_on_cpu_warns_how_slow(tmp_path: Path) -> None:
    write_hf(tmp_path)
    choice = choose_backend(tmp_path, hw=CPU)
    assert (choice.backend, choice.device, choice.model_path) == ("transformers", "cpu", tmp_path)
    assert len(choice.warnings) == 1
    assert "tokens/s" in choice.warnings[0] and "135M parameters" in choice.warnings[0]
    assert choice.warnings[0] in choice.reasons


def test_safetensors_with_cuda_runs_on_the_gpu(tmp_path: Path) -> None:
    write_hf(tmp_path)
    choice = choose_backend(tmp_path, hw=CUDA)
    assert (choice.backend, choice.device, choice.warnings) == ("transformers", "cuda:0", ())
    assert choose_backend(tmp_path, hw=CUDA, device="cpu").device == "cpu"
    with pytest.raises(BackendError, match="1 CUDA GPU"):
        choose_backend(tmp_path, hw=CUDA, device="cuda:1")


def test_transformers_on_cuda_without_a_gpu_says_what_to_pass(tmp_path: Path) -> None:
    write_hf(tmp_path)
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path, hw=CPU, device="cuda")
    assert "--device cpu" in err.value.one_line()
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path, hw=METAL, device="metal")
    assert "llama.cpp" in err.value.one_line()


def test_pickle_weights_need_allow_pickle(tmp_path: Path) -> None:
    write_hf(tmp_path, weights="pytorch_model.bin")
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path, hw=CPU)
    assert "--allow-pickle" in err.value.one_line()
    choice = choose_backend(tmp_path, hw=CPU, options=EngineOptions(allow_pickle=True))
    assert choice.backend == "transformers"


def test_safetensors_preferred_over_pickle(tmp_path: Path) -> None:
    write_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    choice = choose_backend(tmp_path, hw=CPU)
    assert any("safetensors preferred" in r for r in choice.reasons)


# ---- overrides and impossible combinations -------------------------------------------------------


def test_backend_override_needs_matching_files(tmp_path: Path) -> None:
    gguf_dir, hf_dir = write_gguf(tmp_path / "g" / "m.gguf").parent, write_hf(tmp_path / "h")
    with pytest.raises(BackendError, match=r"needs config\.json"):
        choose_backend(gguf_dir, hw=CPU, backend="transformers")
    with pytest.raises(BackendError) as err:
        choose_backend(hf_dir, hw=CPU, backend="llama.cpp")
    assert "convert_hf_to_gguf.py" in err.value.one_line()
    with pytest.raises(BackendError, match="unknown backend"):
        choose_backend(gguf_dir, hw=CPU, backend="vllm")


def test_both_formats_present_follow_the_kitfile_then_llamacpp(tmp_path: Path) -> None:
    write_hf(tmp_path)
    write_gguf(tmp_path / "m.gguf")
    assert choose_backend(tmp_path, hw=CPU).backend == "llama.cpp"
    assert choose_backend(tmp_path, hw=CPU, model_format="safetensors").backend == "transformers"
    assert choose_backend(tmp_path, hw=CPU, framework="transformers").backend == "transformers"
    assert choose_backend(tmp_path, hw=CPU, backend="hf").backend == "transformers"
    assert choose_backend(tmp_path, hw=CUDA_TORCH_ONLY).backend == "transformers"


def test_no_weights_is_an_error_naming_the_format(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(BackendError, match="'onnx'"):
        choose_backend(tmp_path, hw=CPU, model_format="onnx")
    with pytest.raises(BackendError, match="does not exist"):
        choose_backend(tmp_path / "missing", hw=CPU)


def test_a_peft_adapter_as_the_model_is_explained(tmp_path: Path) -> None:
    write_peft(tmp_path)
    with pytest.raises(BackendError, match="PEFT adapter, not a model"):
        choose_backend(tmp_path, hw=CPU)


# ---- adapters ------------------------------------------------------------------------------------


def test_gguf_lora_part_on_gguf_base(tmp_path: Path) -> None:
    base = write_gguf(tmp_path / "m.gguf")
    lora = write_gguf(tmp_path / "lora" / "style.gguf", gtype="adapter")
    part = PartInfo(path=tmp_path / "lora" / "style.gguf", type="lora-adapter", name="style")
    # model.path "." puts the part inside the model directory: it must not count as a second model
    choice = choose_backend(tmp_path, hw=CPU, parts=[part])
    assert choice.model_path == base
    assert [(a.name, a.path, a.kind) for a in choice.adapters] == [("style", lora, "gguf-lora")]


def test_adapters_are_recognised_without_a_part_type(tmp_path: Path) -> None:
    write_gguf(tmp_path / "model" / "m.gguf")
    write_gguf(tmp_path / "extra.gguf", gtype="adapter")
    choice = choose_backend(tmp_path / "model", hw=CPU, parts=[PartInfo(path=tmp_path / "extra.gguf")])
    assert [(a.name, a.kind) for a in choice.adapters] == [("extra", "gguf-lora")]
    write_hf(tmp_path / "hf")
    write_peft(tmp_path / "peft")
    choice = choose_backend(tmp_path / "hf", hw=CPU, parts=[PartInfo(path=tmp_path / "peft")])
    assert [(a.name, a.kind) for a in choice.adapters] == [("peft", "peft-lora")]


def test_unlisted_adapter_gguf_in_the_model_dir_is_not_a_second_model(tmp_path: Path) -> None:
    write_gguf(tmp_path / "m.gguf")
    write_gguf(tmp_path / "stray-lora.gguf", gtype="adapter")
    choice = choose_backend(tmp_path, hw=CPU)
    assert choice.model_path.name == "m.gguf" and choice.adapters == ()
    assert any("stray-lora.gguf" in r for r in choice.reasons)


def test_peft_adapter_on_gguf_base_says_how_to_convert(tmp_path: Path) -> None:
    write_gguf(tmp_path / "model" / "m.gguf")
    part = PartInfo(path=write_peft(tmp_path / "lora"), type="lora-adapter", name="tone")
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path / "model", hw=CPU, parts=[part])
    line = err.value.one_line()
    assert "'tone'" in line and "convert_lora_to_gguf.py" in line and "\n" not in line


def test_gguf_adapter_on_transformers_base_is_refused(tmp_path: Path) -> None:
    write_hf(tmp_path / "model")
    part = PartInfo(path=write_gguf(tmp_path / "l.gguf", gtype="adapter"), type="lora-adapter", name="tone")
    with pytest.raises(BackendError) as err:
        choose_backend(tmp_path / "model", hw=CPU, parts=[part])
    assert "'tone'" in err.value.one_line() and "PEFT" in err.value.one_line()


def test_adapter_for_another_architecture_is_refused(tmp_path: Path) -> None:
    write_gguf(tmp_path / "model" / "m.gguf", arch="llama")
    part = PartInfo(path=write_gguf(tmp_path / "l.gguf", gtype="adapter", arch="qwen2"), type="lora-adapter")
    with pytest.raises(BackendError, match="qwen2"):
        choose_backend(tmp_path / "model", hw=CPU, parts=[part])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nothing-here", "does not exist"),
        (lambda p: write_gguf(p / "base.gguf"), "not an adapter"),
        (lambda p: (p / "w.txt", (p / "w.txt").write_text("x"))[0], "neither"),
        (lambda p: (p / "d", (p / "d").mkdir())[0], "no adapter_config.json"),
    ],
)
def test_declared_lora_part_that_is_not_one_names_the_part(tmp_path: Path, make, message: str) -> None:
    write_gguf(tmp_path / "model" / "m.gguf")
    part = PartInfo(path=make(tmp_path), type="lora-adapter", name="broken")
    with pytest.raises(BackendError, match=message) as err:
        choose_backend(tmp_path / "model", hw=CPU, parts=[part])
    assert "'broken'" in err.value.one_line()


def test_peft_part_without_weights_names_the_part(tmp_path: Path) -> None:
    write_hf(tmp_path / "model")
    lora = write_peft(tmp_path / "lora")
    (lora / "adapter_model.safetensors").unlink()
    with pytest.raises(BackendError, match=r"'lora'.*adapter_model\.safetensors"):
        choose_backend(tmp_path / "model", hw=CPU, parts=[PartInfo(path=lora, type="lora-adapter")])


# ---- the GGUF header reader ----------------------------------------------------------------------


def test_gguf_header_reader_skips_arrays_and_rejects_truncation(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", gtype="adapter", arch="phi3")
    assert read_metadata(path, ["general.type", "general.architecture", "general.alignment"]) == {
        "general.type": "adapter",
        "general.architecture": "phi3",
        "general.alignment": 32,
    }
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GGUFHeaderError, match="truncated"):
        read_metadata(path, ["general.type"])
