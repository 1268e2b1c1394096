"""``kit-dev pack DIR``: a directory with a Kitfile → a ModelKit in the local store, as kit packs it.

One uncompressed tar layer per Kitfile entry, in kit's order, with kit's tar rules (see
``devserver.modelkit._tar`` for the bytes and ``_walk`` below for which entries go in), so a kit-dev
layer has the same diffId as kit's for the same files and permission bits, and the config blob
is byte-identical. Layers stream from disk through the tar writer into the store's ingest; no
file is ever held in memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from devserver import __version__
from devserver.errors import KitfileError
from devserver.modelkit import _gojson, mediatypes
from devserver.modelkit._tar import GoTarWriter
from devserver.modelkit.dialect import load_any_kitfile
from devserver.modelkit.kitfile import Entry, Kitfile, find_kitfile
from devserver.modelkit.kitignore import IgnoreRules, read_ignore_patterns
from devserver.oci.descriptor import OCI_IMAGE_MANIFEST, Descriptor, sha256_digest
from devserver.oci.reference import DEFAULT_REGISTRY, Reference
from devserver.oci.store import LocalStore

__all__ = ["PackResult", "manifest_json", "pack_modelkit", "walk_layer"]

CLI_VERSION = f"kit-dev/{__version__}"


@dataclass(frozen=True)
class PackResult:
    """What a pack produced; everything is already committed to the store."""

    manifest_digest: str
    manifest: bytes
    config: Kitfile
    config_descriptor: Descriptor
    layers: list[Descriptor]
    reference: Reference
    warning: str | None = None  # the older-dialect warning, for the caller to print once


def _rel(a: str, b: str) -> str:
    """Go's filepath.Rel for two clean relative paths."""
    pa = [] if a == "." else a.split("/")
    pb = [] if b == "." else b.split("/")
    common = 0
    while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
        common += 1
    parts = [".."] * (len(pa) - common) + pb[common:]
    return "/".join(parts) or "."


def _same_dir_tree(a: str, b: str) -> bool:
    # kit's test, quirk included: a name containing ".." in both directions counts as unrelated.
    return not (".." in _rel(a, b) and ".." in _rel(b, a))


def walk_layer(context_dir: Path, layer_path: str, rules: IgnoreRules) -> Iterator[tuple[str, os.stat_result]]:
    """The (name, lstat) pairs kit writes for one layer, in Go ``filepath.Walk`` order.

    Walks the whole context dir depth first with names sorted per directory; keeps regular files and
    directories on the layer's own tree (its ancestors, itself, its contents) that are not ignored.
    """
    layer_path = os.path.normpath(layer_path) if layer_path else "."
    if not (context_dir / layer_path).exists():
        raise KitfileError(f"path {layer_path} does not exist in {context_dir}")

    def visit(rel: str) -> Iterator[tuple[str, os.stat_result]]:
        full = context_dir / rel if rel != "." else context_dir
        with os.scandir(full) as it:
            names = sorted((e.name for e in it), key=os.fsencode)
        for name in names:
            child = name if rel == "." else f"{rel}/{name}"
            info = os.lstat(context_dir / child)
            is_dir = stat.S_ISDIR(info.st_mode)
            if not is_dir and not stat.S_ISREG(info.st_mode):
                continue  # symlinks, devices, sockets: kit skips them
            if not _same_dir_tree(layer_path, child):
                continue
            if rules.matches(child, layer_path):
                if is_dir and rules.has_exclusions:  # a "!" rule may re-include something inside
                    yield from visit(child)
                continue
            yield child, info
            if is_dir:
                yield from visit(child)

    yield from visit(".")


def _write_layer(context_dir: Path, entry: Entry, rules: IgnoreRules, store: LocalStore) -> Descriptor:
    clean = os.path.normpath(entry.path) if entry.path else "."
    with store.new_blob() as writer:
        tar = GoTarWriter(writer.write)
        for name, info in walk_layer(context_dir, entry.path, rules):
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                tar.add_dir(name, mode)
            else:
                with open(context_dir / name, "rb") as f:
                    tar.add_file(name, mode, info.st_size, f)
        tar.close()
    annotations = {mediatypes.ANNOTATION_FILEPATH: clean}
    if entry.kind == "prompt":
        annotations[mediatypes.ANNOTATION_LAYER_SUBTYPE] = "prompt"
    return Descriptor(mediatypes.layer_media_type(entry.base), writer.digest, writer.size, annotations)


def _created(environ: Mapping[str, str]) -> str:
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_json(config: Descriptor, layers: list[Descriptor], annotations: dict[str, str]) -> bytes:
    """The image manifest as kit (oras-go) marshals it: Go field order, compact."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_MANIFEST,
        "artifactType": mediatypes.ARTIFACT_TYPE_KIT_MANIFEST,
        "config": _descriptor_json(config),
        "layers": [_descriptor_json(d) for d in layers],
        "annotations": _gojson.GoMap(annotations),
    }
    return _gojson.go_marshal(manifest)


def _descriptor_json(descriptor: Descriptor) -> dict[str, object]:
    out = descriptor.to_json()
    if "annotations" in out:
        out["annotations"] = _gojson.GoMap(out["annotations"])
    return out


def pack_modelkit(
    context_dir: Path,
    store: LocalStore,
    *,
    kitfile: Path | None = None,
    reference: Reference | None = None,
    environ: Mapping[str, str] | None = None,
) -> PackResult:
    """Pack ``context_dir`` into ``store`` and record it under ``reference`` (default: untagged).

    ``environ`` is read only for ``SOURCE_DATE_EPOCH`` (the manifest's created time); it defaults to
    the process environment, as reproducible-build tools expect.
    """
    context_dir = Path(context_dir).resolve()
    kitfile_path = kitfile if kitfile is not None else find_kitfile(context_dir)
    loaded = load_any_kitfile(kitfile_path)
    kit = loaded.kitfile  # a model.path that names another ModelKit gets no layer: kit packs it the same way
    if kit.mcp_servers:
        raise KitfileError("mcpServers entries are not supported by kit-dev pack yet")
    entries = list(kit.entries())
    rules = IgnoreRules(read_ignore_patterns(context_dir), [e.path for e in entries])
    layers: list[Descriptor] = []
    for entry in entries:
        descriptor = _write_layer(context_dir, entry, rules, store)
        entry.item.digest = descriptor.digest
        entry.item.diff_id = descriptor.digest  # uncompressed: the diffId is the digest
        layers.append(descriptor)
    config_descriptor = store.add_blob_bytes(kit.to_config_json(), mediatypes.MEDIA_TYPE_KIT_CONFIG)
    annotations = {
        mediatypes.ANNOTATION_CLI_VERSION: CLI_VERSION,
        mediatypes.ANNOTATION_CREATED: _created(os.environ if environ is None else environ),
    }
    if loaded.metadata:
        annotations[mediatypes.ANNOTATION_METADATA] = _gojson.go_marshal(loaded.metadata).decode()
    manifest = manifest_json(config_descriptor, layers, annotations)
    if reference is None:
        reference = Reference(DEFAULT_REGISTRY, "_", None, sha256_digest(manifest))
    digest = store.put_manifest(reference, manifest)
    return PackResult(digest, manifest, kit, config_descriptor, layers, reference, loaded.warning)
