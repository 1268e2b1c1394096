"""``kit-dev``: the command line. It parses, builds ``Settings``, and calls into the packages.

Every error a user can cause is a ``KitDevError``; it is caught once, in ``main``, and printed as one
line that names the fix, with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic

from devserver import __version__, daemon
from devserver.errors import KitDevError, UsageError
from devserver.oci.options import DEFAULT_CONCURRENCY, RegistryOptions
from devserver.settings import Settings

log = logging.getLogger("kit-dev")

# argparse dests that map one-to-one onto Settings fields
_SETTINGS_FLAGS = (
    "cache_dir", "plain_http", "host", "port", "api_key", "queue_size", "max_tokens_limit", "chat_template",
    "metrics_compat", "log_level", "backend", "device", "model_file", "ctx_size", "threads", "n_gpu_layers",
    "parallel", "prompt_cache_mib", "flash_attn", "trust_remote_code", "allow_pickle", "allow_runtime_lora",
)  # fmt: skip


def _add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, help="ModelKit cache (default: models-cache/; env KIT_DEV_CACHE_DIR)")


def _add_registry_flags(parser: argparse.ArgumentParser, *, concurrency: bool = False) -> None:
    """kit's network flags (pkg/cmd/options/network.go), with the same names and defaults."""
    parser.add_argument(
        "--plain-http", action="store_true", default=None,
        help="use plain HTTP for a non-loopback registry (loopback registries always use it)",
    )  # fmt: skip
    parser.add_argument("--tls-verify", type=_boolean, default=True, metavar="true|false",
                        help="verify the registry's TLS certificate (default true)")  # fmt: skip
    parser.add_argument("--tls-cert", action="append", type=Path, default=[], metavar="CA_FILE",
                        help="extra CA certificate (PEM) to trust; repeatable")  # fmt: skip
    parser.add_argument("--cert", type=Path, default=os.environ.get("KITOPS_CLIENT_CERT") or None,
                        help="client certificate (PEM) for mutual TLS (env KITOPS_CLIENT_CERT)")  # fmt: skip
    parser.add_argument("--key", type=Path, default=os.environ.get("KITOPS_CLIENT_KEY") or None,
                        help="client certificate key (env KITOPS_CLIENT_KEY)")  # fmt: skip
    if concurrency:
        parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                            help=f"blobs transferred at once (default {DEFAULT_CONCURRENCY})")  # fmt: skip


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def registry_options(args: argparse.Namespace, settings: Settings | None = None) -> RegistryOptions:
    """The network flags of one command as ``RegistryOptions``."""
    concurrency = getattr(args, "concurrency", DEFAULT_CONCURRENCY)
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1", param="concurrency")
    plain = args.plain_http or (settings.plain_http if settings else False)
    return RegistryOptions(
        plain_http=True if plain else None,
        tls_verify=args.tls_verify,
        ca_files=tuple(args.tls_cert),
        client_cert=args.cert,
        client_key=args.key,
        concurrency=concurrency,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kit-dev", description="Serve KitOps ModelKits on an OpenAI-compatible API.")
    parser.add_argument("--version", action="version", version=f"kit-dev {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    start = commands.add_parser("start", help="pull a ModelKit (or read a directory) and serve it")
    start.add_argument("directory", nargs="?", help="a local directory that holds a Kitfile")
    start.add_argument("--modelkit", "-m", metavar="REF", help="a ModelKit reference, e.g. 127.0.0.1:5000/org/model:1")
    start.add_argument("--host", help="address to bind (default 127.0.0.1)")
    start.add_argument("--port", type=int, help="port to listen on (default 8000)")
    start.add_argument("--foreground", action="store_true", help="stay attached (Docker, tests) instead of detaching")
    start.add_argument("--wait-timeout", type=float, default=900.0, help="seconds to wait for the server to be ready")
    start.add_argument("--backend", choices=["llama.cpp", "transformers"], help="override the engine choice")
    start.add_argument("--device", help="override the device: cpu, cuda, cuda:N, metal")
    start.add_argument("--model-file", help="which weights file to serve when the model holds several")
    start.add_argument("--ctx-size", type=int, help="context size in tokens (default: Kitfile parameters, else 4096)")
    start.add_argument("--threads", type=int, help="CPU threads for the engine")
    start.add_argument("--n-gpu-layers", type=int, help="layers to offload to the GPU (-1: all)")
    start.add_argument("--parallel", type=int, help="requests decoded at once (llama.cpp slots, transformers batch)")
    start.add_argument(
        "--prompt-cache-mib", type=int, help="host memory for reusable prompt KV, llama.cpp (default 512; 0: off)"
    )
    start.add_argument(
        "--flash-attn",
        choices=["auto", "on", "off"],
        help="flash attention, llama.cpp (default auto: on where the device supports it, as llama-server)",
    )
    start.add_argument("--api-key", help="require this Bearer key on /v1/* (env KIT_DEV_API_KEY)")
    start.add_argument("--queue-size", type=int, help="requests that may wait per model before 429")
    start.add_argument("--max-tokens-limit", type=int, help="cap on generated tokens per request")
    start.add_argument("--chat-template", type=Path, help="a Jinja chat template file that overrides the model's")
    start.add_argument("--metrics-compat", action="append", choices=["vllm"], help="also expose vLLM metric names")
    start.add_argument("--trust-remote-code", action="store_true", default=None, help="let transformers run model code")
    start.add_argument("--allow-pickle", action="store_true", default=None, help="allow .bin/.pt pickle weights")
    start.add_argument(
        "--allow-runtime-lora", action="store_true", default=None,
        help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter",
    )  # fmt: skip
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    start.add_argument("--index-entry", help="which ModelKit of an index to serve (digest, position or name)")
    _add_cache_flags(start)
    _add_registry_flags(start, concurrency=True)

    commands.add_parser("stop", help="stop the background server")
    commands.add_parser("status", help="show whether a server runs, where, and if it is ready")
    logs = commands.add_parser("logs", help="print the server log")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the server stops")
    for sub in commands.choices.values():
        if sub.prog.split()[-1] in ("stop", "status", "logs"):
            _add_cache_flags(sub)

    pack = commands.add_parser("pack", help="pack a directory with a Kitfile into a ModelKit")
    pack.add_argument("directory", type=Path)
    pack.add_argument("-t", "--tag", required=True, metavar="REF", help="reference to store it under")
    pack.add_argument("-f", "--file", type=Path, help="the Kitfile (default: DIRECTORY/Kitfile)")
    pack.add_argument("--push", action="store_true", help="also push it to the registry the reference names")
    _add_cache_flags(pack)
    _add_registry_flags(pack, concurrency=True)

    pull = commands.add_parser("pull", help="pull a whole ModelKit into the cache")
    pull.add_argument("reference", metavar="REF")
    pull.add_argument("--index-entry", help="which ModelKit of an index to pull (digest, position or name)")
    _add_cache_flags(pull)
    _add_registry_flags(pull, concurrency=True)

    login = commands.add_parser("login", help="check and store credentials for a registry")
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username", default="", help="user name (none: the password is an identity token)")
    login.add_argument("-p", "--password", help="password (insecure on the command line; prefer --password-stdin)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _add_registry_flags(login)

    logout = commands.add_parser("logout", help="forget kit-dev's stored credentials for a registry")
    logout.add_argument("registry", metavar="REGISTRY")

    listing = commands.add_parser("list", help="list the ModelKits in the cache")
    listing.add_argument("repository", nargs="?", help="only this repository")
    listing.add_argument("--json", action="store_true", help="kit's JSON format")
    _add_cache_flags(listing)

    rm = commands.add_parser("rm", help="remove a ModelKit from the cache (and blobs only it used)")
    rm.add_argument("reference", metavar="REF")
    _add_cache_flags(rm)

    prune = commands.add_parser("prune", help="delete unreferenced blobs and unpacked views")
    _add_cache_flags(prune)

    inspect = commands.add_parser("inspect", help="print a ModelKit's manifest and Kitfile as JSON")
    inspect.add_argument("reference", metavar="REF")
    inspect.add_argument("-r", "--remote", action="store_true", help="ask the registry, not the cache")
    inspect.add_argument("--index-entry", help="for an index: show this entry instead of the list")
    _add_cache_flags(inspect)
    _add_registry_flags(inspect)

    unpack = commands.add_parser("unpack", help="unpack a ModelKit (or parts of it) into a directory")
    unpack.add_argument("reference", metavar="REF")
    unpack.add_argument("-d", "--dir", type=Path, default=Path("."), help="target directory (default: .)")
    unpack.add_argument("-f", "--filter", action="append", default=[], metavar="TYPES[:IDS]",
                        help="e.g. model, datasets:train, docs:./README.md; repeatable (OR)")  # fmt: skip
    unpack.add_argument("-o", "--overwrite", action="store_true", help="replace files that exist")
    unpack.add_argument("--index-entry", help="which ModelKit of an index to unpack")
    _add_cache_flags(unpack)
    _add_registry_flags(unpack, concurrency=True)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in _SETTINGS_FLAGS if getattr(args, name, None) is not None}
    try:
        return Settings(**given)
    except pydantic.ValidationError as exc:  # a flag or KIT_DEV_* value out of range
        first = exc.errors()[0]
        problem = f"{first['msg'].lower()}, got {first['input']!r}"
        if not first["loc"]:
            raise UsageError(problem) from exc
        name = str(first["loc"][0])
        raise UsageError(f"--{name.replace('_', '-')} (env KIT_DEV_{name.upper()}): {problem}") from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)


def cmd_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if bool(args.directory) == bool(args.modelkit):
        raise UsageError("start needs exactly one of DIRECTORY or --modelkit REF",
                         hint="e.g. `kit-dev start --modelkit 127.0.0.1:5000/org/model:1`")  # fmt: skip
    looks_like_path = args.directory and args.directory.startswith((".", "/", "~"))
    if looks_like_path and not Path(args.directory).expanduser().is_dir():
        raise UsageError(f"no directory {args.directory}", hint="give one that holds a Kitfile, or --modelkit REF")
    settings = settings_from(args)
    if not args.foreground:
        state = daemon.RunState(settings.run_dir)
        url = f"http://{_connect_host(settings.host)}:{settings.port}"
        pid = daemon.start_background(state, list(argv), url, wait_timeout=args.wait_timeout)
        stop = "kit-dev stop" + (f" --cache-dir {args.cache_dir}" if args.cache_dir else "")  # its run/ lives there
        print(f"kit-dev is serving at {url}/v1 (PID {pid}); stop it with `{stop}`")
        return 0
    return _serve_foreground(args, settings)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)


def _serve_foreground(args: argparse.Namespace, settings: Settings) -> int:
    from devserver import launch, resolve
    from devserver.oci.store import LocalStore
    from devserver.server.app import create_app, serve

    _configure_logging(settings.log_level)
    store = LocalStore(settings.cache_dir)
    target = args.directory or args.modelkit
    network = registry_options(args, settings)
    began = time.monotonic()
    resolved = resolve.resolve(target, store, options=network, index_entry=args.index_entry)
    resolve_seconds = time.monotonic() - began
    model = resolved.kitfile.model
    options = launch.engine_options(settings, model.parameters if model else None)
    choice = launch.choose(resolved, settings, options)
    config = launch.server_config(
        resolved, settings, store=store, registry_options=network, resolve_seconds=resolve_seconds
    )
    app = create_app(config, launch.backend_loader(choice, options))
    log.info("serving %s as model %r on http://%s:%d/v1", target, config.model.id, settings.host, settings.port)
    serve(app, settings.host, settings.port, log_level=settings.log_level)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    pid = daemon.stop(daemon.RunState(settings_from(args).run_dir))
    print(f"stopped the kit-dev server (PID {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = daemon.status(daemon.RunState(settings_from(args).run_dir))
    if not state["running"]:
        print("no kit-dev server is running")
        return 3
    print(f"kit-dev server PID {state['pid']} at {state['url']}: {state['health']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in daemon.follow(daemon.RunState(settings_from(args).run_dir), follow_=args.follow):
        print(line, flush=True)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from devserver.modelkit.pack import pack_modelkit
    from devserver.oci.progress import transfer_progress
    from devserver.oci.push import push_modelkit
    from devserver.oci.reference import parse_reference
    from devserver.oci.registry import RegistryClient
    from devserver.oci.store import LocalStore

    settings = settings_from(args)
    reference = parse_reference(args.tag)
    store = LocalStore(settings.cache_dir)
    result = pack_modelkit(args.directory, store, kitfile=args.file, reference=reference)
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    print(f"packed {reference} ({result.manifest_digest})")
    if args.push:
        if reference.registry == "localhost":
            raise UsageError(f"{reference} names no registry to push to",
                             hint="tag it like 127.0.0.1:5000/org/model:1")  # fmt: skip
        with RegistryClient(reference.registry, options=registry_options(args, settings)) as client:
            progress = transfer_progress("push")
            if progress is None:
                push_modelkit(reference, store, client=client)
            else:
                with progress:
                    push_modelkit(reference, store, client=client, progress=progress)
        print(f"pushed {reference}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from devserver.oci.progress import transfer_progress
    from devserver.oci.pull import pull_modelkit
    from devserver.oci.reference import parse_reference
    from devserver.oci.registry import RegistryClient
    from devserver.oci.store import LocalStore

    settings = settings_from(args)
    reference = parse_reference(args.reference)
    options = registry_options(args, settings)
    store = LocalStore(settings.cache_dir)
    progress = transfer_progress("pull")
    with RegistryClient(reference.registry, options=options) as client:
        if progress is None:
            pulled = pull_modelkit(reference, store, client=client, options=options, index_entry=args.index_entry)
        else:
            with progress:
                pulled = pull_modelkit(
                    reference, store, client=client, options=options, index_entry=args.index_entry, progress=progress
                )
    if pulled.index is not None:
        for position, entry in enumerate(pulled.index):
            mark = "*" if entry.descriptor.digest == pulled.manifest_digest else " "
            print(f"{mark} {position}: {entry.label()} {entry.descriptor.digest}")
    print(f"pulled {reference} ({pulled.manifest_digest})")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from devserver.oci.credentials import Credentials, store_login
    from devserver.oci.registry import RegistryClient

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password is not None:
        print("warning: using --password via the CLI is insecure; use --password-stdin", file=sys.stderr)
        password = args.password
    else:
        import getpass

        password = getpass.getpass("Password: ")
    if not password:
        raise UsageError("a password (or identity token) is required", hint="pass --password-stdin")
    creds = Credentials(username=args.username, password="" if not args.username else password,
                        identity_token="" if args.username else password, source="kit-dev login")  # fmt: skip
    with RegistryClient(args.registry, options=registry_options(args), credentials=creds) as client:
        client.ping()
    path = store_login(args.registry, args.username, password)
    print(f"Log in successful; credentials for {args.registry} are in {path}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from devserver.oci.credentials import remove_login

    if not remove_login(args.registry):
        print(f"not logged in to {args.registry} (kit-dev keeps no credentials for it)")
        return 1
    print(f"Removed login credentials for {args.registry}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from devserver.oci.cache import list_rows
    from devserver.oci.pull import format_bytes
    from devserver.oci.store import LocalStore

    rows = list_rows(LocalStore(settings_from(args).cache_dir))
    if args.repository:
        rows = [r for r in rows if r.repository == args.repository.removeprefix("localhost/")]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    table = [("REPOSITORY", "TAG", "MAINTAINER", "NAME", "SIZE", "DIGEST")]
    table += [(r.repository, r.tag, r.maintainer, r.name, format_bytes(r.size), r.digest) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "   " + row[5])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from devserver.oci.cache import remove
    from devserver.oci.pull import format_bytes
    from devserver.oci.store import LocalStore

    removed, freed = remove(LocalStore(settings_from(args).cache_dir), args.reference)
    print(f"Removed {args.reference} ({removed} blobs, {format_bytes(freed)} freed)")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from devserver.oci.cache import prune
    from devserver.oci.pull import format_bytes
    from devserver.oci.store import LocalStore

    removed, freed = prune(LocalStore(settings_from(args).cache_dir))
    print(f"Pruned {removed} blobs, {format_bytes(freed)} freed")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from devserver.oci.inspect import inspect_modelkit
    from devserver.oci.store import LocalStore

    settings = settings_from(args)
    document = inspect_modelkit(
        args.reference, LocalStore(settings.cache_dir), registry_options(args, settings),
        remote=args.remote, index_entry=args.index_entry,
    )  # fmt: skip
    print(json.dumps(document, indent=2))
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from devserver.oci.store import LocalStore
    from devserver.resolve import unpack_to_directory

    settings = settings_from(args)
    written = unpack_to_directory(
        args.reference, LocalStore(settings.cache_dir), args.dir, args.filter,
        options=registry_options(args, settings), overwrite=args.overwrite, index_entry=args.index_entry,
    )  # fmt: skip
    print(f"Unpacked {written} layers of {args.reference} into {args.dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handlers: dict[str, Any] = {
        "stop": cmd_stop, "status": cmd_status, "logs": cmd_logs, "pack": cmd_pack, "pull": cmd_pull,
        "login": cmd_login, "logout": cmd_logout, "list": cmd_list, "rm": cmd_rm, "prune": cmd_prune,
        "inspect": cmd_inspect, "unpack": cmd_unpack,
    }  # fmt: skip
    try:
        if args.command == "start":
            return cmd_start(args, argv)
        return int(handlers[args.command](args))
    except KitDevError as exc:
        print(f"{daemon.ERROR_PREFIX} {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
