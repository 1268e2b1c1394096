"""The Kitfile reader against kit's behaviour: strict keys with lines, YAML 1.2 scalars, golden JSON."""

from pathlib import Path

import pytest
import yaml

from devserver.errors import KitfileError
from devserver.modelkit.kitfile import Kitfile, find_kitfile, load_kitfile, parse_kitfile
from tests.support.kitops_vectors import kitops_vector, vectors_dir

GOLDEN = ["test-data-types.yaml", "test-nested-parameters.yaml"]


@pytest.mark.parametrize("name", GOLDEN)
def test_config_json_matches_kit_golden_bytes(name: str) -> None:
    case = yaml.safe_load(kitops_vector(f"kitops-v1.7/parameters/{name}").read_text())
    # kit's own test decodes without validation (the vector's path is absolute).
    kitfile = parse_kitfile(case["kitfileYaml"], validate=False)
    assert kitfile.to_config_json() == case["kitfileJson"].encode()


@pytest.mark.parametrize("name", GOLDEN)
def test_config_json_round_trips(name: str) -> None:
    case = yaml.safe_load(kitops_vector(f"kitops-v1.7/parameters/{name}").read_text())
    golden = case["kitfileJson"].encode()
    assert Kitfile.from_config_json(golden).to_config_json() == golden


def test_unknown_keys_fail_with_line_and_go_type() -> None:
    text = "manifestVersion: 1.0.0\nmodel:\n  name: m\n  path: m\n  size: 2MB\nmodelParts: []\n"
    with pytest.raises(KitfileError) as err:
        parse_kitfile(text)
    assert "line 5: field size not found in type artifact.Model" in err.value.message
    assert "line 6: field modelParts not found in type artifact.KitFile" in err.value.message


def test_digest_keys_are_not_allowed_in_yaml() -> None:
    with pytest.raises(KitfileError, match=r"line 4: field digest not found in type artifact\.Model"):
        parse_kitfile("manifestVersion: 1.0.0\nmodel:\n  path: m\n  digest: sha256:abc\n")


def test_older_dialect_kitfile_is_rejected_naming_each_key() -> None:
    text = (vectors_dir() / "dialect" / "Kitfile").read_text()
    with pytest.raises(KitfileError) as err:
        parse_kitfile(text)
    message = err.value.message
    for expected in (
        "field repository not found in type artifact.Package",
        "field modelParts not found in type artifact.KitFile",
        "cannot unmarshal !!seq into artifact.Model",
        "field samples not found in type artifact.DataSet",
        "field name not found in type artifact.Code",
        "field name not found in type artifact.Docs",
        "field metadata not found in type artifact.KitFile",
    ):
        assert expected in message


def test_string_fields_keep_literal_text_yaml_1_2() -> None:
    text = (
        "manifestVersion: 1.0.0\npackage:\n  version: 1.10\n  authors: [a, 2]\n"
        "model:\n  path: m\n  version: 1.10\n  license: yes\n"
        "  parameters: {on: yes, n: 0x1F, f: 1.2e+3, t: 2001-12-14, z: ~, s: '<&>'}\n"
    )
    kitfile = parse_kitfile(text)
    assert kitfile.package.version == "1.10"
    assert kitfile.package.authors == ["a", "2"]
    assert kitfile.model is not None
    assert (kitfile.model.version, kitfile.model.license) == ("1.10", "yes")
    assert kitfile.model.parameters == {"on": "yes", "n": 31, "f": 1200.0, "t": "2001-12-14", "z": None, "s": "<&>"}
    assert kitfile.to_config_json() == (
        b'{"manifestVersion":"1.0.0","package":{"version":"1.10","authors":["a","2"]},'
        b'"model":{"path":"m","license":"yes","version":"1.10","parameters":'
        b'{"f":1200,"n":31,"on":"yes","s":"\\u003c\\u0026\\u003e","t":"2001-12-14","z":null}}}'
    )


def test_empty_sections_are_omitted_but_package_and_docs_path_stay() -> None:
    kitfile = parse_kitfile("manifestVersion: 1.0.0\ndocs:\n  - description: d\n", validate=False)
    expected = b'{"manifestVersion":"1.0.0","package":{},"docs":[{"path":"","description":"d"}]}'
    assert kitfile.to_config_json() == expected


def test_prompts_and_mcp_servers_are_read_in_go_order() -> None:
    kitfile = parse_kitfile(
        "manifestVersion: 1.0.0\nprompts:\n  - path: p/\n    name: sys\nmcpServers:\n  - name: s\n    path: s.mcpb\n"
    )
    assert kitfile.to_config_json() == (
        b'{"manifestVersion":"1.0.0","package":{},"prompts":[{"name":"sys","path":"p/"}],'
        b'"mcpServers":[{"name":"s","path":"s.mcpb"}]}'
    )


def test_non_ascii_is_raw_and_line_separators_escaped() -> None:
    kitfile = parse_kitfile('manifestVersion: 1.0.0\npackage:\n  description: "é\\u2028x"\n')
    assert kitfile.to_config_json() == '{"manifestVersion":"1.0.0","package":{"description":"é\\u2028x"}}'.encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("model:\n  path: data\ndatasets:\n  - name: d\n    path: ./data/\n", "use the same path data"),
        ("code:\n  - path: .\ndocs:\n  - path: ''\n", "use the same path ."),
        ("datasets:\n  - name: d\n    path: /abs/data\n", "absolute paths are not supported"),
        ("model:\n  path: m\n  parts:\n    - path: p\n      type: config file\n", "has invalid type"),
        ("model:\n  path: m\n  parts:\n    - path: p\n      type: " + "a" * 65 + "\n", "type is too long"),
    ],
)
def test_kit_validation_rules(body: str, message: str) -> None:
    with pytest.raises(KitfileError, match=message):
        parse_kitfile("manifestVersion: 1.0.0\n" + body)


def test_model_path_may_be_a_modelkit_reference() -> None:
    kitfile = parse_kitfile("manifestVersion: 1.0.0\nmodel:\n  path: jozu.ml/org/base:1\n  parts:\n    - path: a\n")
    assert [e.kind for e in kitfile.entries()] == ["modelpart"]


def test_pykitops_full_kitfile_fails_on_the_part_type_with_a_space() -> None:
    with pytest.raises(KitfileError, match="modelpart config has invalid type"):
        load_kitfile(kitops_vector("pykitops/Kitfile_full"))


def test_find_kitfile_uses_kits_names_in_order(tmp_path: Path) -> None:
    with pytest.raises(KitfileError, match="no Kitfile found"):
        find_kitfile(tmp_path)
    (tmp_path / ".kitfile").write_text("manifestVersion: 1.0.0\n")
    assert find_kitfile(tmp_path).name == ".kitfile"
    (tmp_path / "Kitfile").write_text("manifestVersion: 1.0.0\n")
    assert find_kitfile(tmp_path).name == "Kitfile"


def test_yaml_syntax_error_is_a_kitfile_error(tmp_path: Path) -> None:
    path = tmp_path / "Kitfile"
    path.write_text("model: [unclosed\n")
    with pytest.raises(KitfileError, match="Kitfile"):
        load_kitfile(path)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(KitfileError, match='line 3: mapping key "model" already defined at line 2'):
        parse_kitfile("manifestVersion: 1.0.0\nmodel: {path: a}\nmodel: {path: b}\n")


def test_config_json_from_newer_kit_ignores_unknown_keys() -> None:
    data = b'{"manifestVersion":"1.0.0","package":{},"datasets":[{"name":"d","remotePath":"s3://x","path":"d"}]}'
    assert Kitfile.from_config_json(data).datasets[0].name == "d"
    with pytest.raises(KitfileError):
        Kitfile.from_config_json(b"not json")
