"""``kit-dev``: the command line. It parses, builds ``Settings``, and calls into the packages.

Every error a user can cause is a ``KitDevError``; it is caught once, in ``main``, and printed as one
line that names the fix, with exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devserver import __version__, daemon
from devserver.errors import KitDevError, UsageError
from devserver.settings import Settings

log = logging.getLogger("kit-dev")

# argparse dests that map one-to-one onto Settings fields
_SETTINGS_FLAGS = (
    "cache_dir", "plain_http", "host", "port", "api_key", "queue_size", "max_tokens_limit", "chat_template",
    "metrics_compat", "log_level", "backend", "device", "model_file", "ctx_size", "threads", "n_gpu_layers",
    "parallel", "trust_remote_code", "allow_pickle",
)  # fmt: skip


def _add_cache_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, help="ModelKit cache (default: models-cache/; env KIT_DEV_CACHE_DIR)")


def _add_registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plain-http", action="store_true", default=None,
        help="use plain HTTP for a non-loopback registry (loopback registries always use it)",
    )  # fmt: skip


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
    start.add_argument("--parallel", type=int, help="requests decoded at once (llama.cpp slots)")
    start.add_argument("--api-key", help="require this Bearer key on /v1/* (env KIT_DEV_API_KEY)")
    start.add_argument("--queue-size", type=int, help="requests that may wait per model before 429")
    start.add_argument("--max-tokens-limit", type=int, help="cap on generated tokens per request")
    start.add_argument("--chat-template", type=Path, help="a Jinja chat template file that overrides the model's")
    start.add_argument("--metrics-compat", action="append", choices=["vllm"], help="also expose vLLM metric names")
    start.add_argument("--trust-remote-code", action="store_true", default=None, help="let transformers run model code")
    start.add_argument("--allow-pickle", action="store_true", default=None, help="allow .bin/.pt pickle weights")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _add_cache_flags(start)
    _add_registry_flags(start)

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
    _add_registry_flags(pack)

    pull = commands.add_parser("pull", help="pull a whole ModelKit into the cache")
    pull.add_argument("reference", metavar="REF")
    _add_cache_flags(pull)
    _add_registry_flags(pull)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in _SETTINGS_FLAGS if getattr(args, name, None) is not None}
    try:
        return Settings(**given)
    except ValueError as exc:  # pydantic's ValidationError: a flag or KIT_DEV_* value out of range
        first = str(exc).splitlines()
        raise UsageError(" ".join(first[1:3]) if len(first) > 2 else str(exc)) from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True)


def cmd_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if bool(args.directory) == bool(args.modelkit):
        raise UsageError("start needs exactly one of DIRECTORY or --modelkit REF",
                         hint="e.g. `kit-dev start --modelkit 127.0.0.1:5000/org/model:1`")  # fmt: skip
    settings = settings_from(args)
    if not args.foreground:
        state = daemon.RunState(settings.run_dir)
        url = f"http://{_connect_host(settings.host)}:{settings.port}"
        pid = daemon.start_background(state, list(argv), url, wait_timeout=args.wait_timeout)
        print(f"kit-dev is serving at {url}/v1 (PID {pid}); stop it with `kit-dev stop`")
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
    resolved = resolve.resolve(target, store, plain_http=settings.plain_http or None)
    model = resolved.kitfile.model
    options = launch.engine_options(settings, model.parameters if model else None)
    choice = launch.choose(resolved, settings, options)
    config = launch.server_config(resolved, settings, choice)
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
    from devserver.oci.push import push_modelkit
    from devserver.oci.reference import parse_reference
    from devserver.oci.registry import RegistryClient
    from devserver.oci.store import LocalStore

    settings = settings_from(args)
    reference = parse_reference(args.tag)
    store = LocalStore(settings.cache_dir)
    result = pack_modelkit(args.directory, store, kitfile=args.file, reference=reference)
    print(f"packed {reference} ({result.manifest_digest})")
    if args.push:
        if reference.registry == "localhost":
            raise UsageError(f"{reference} names no registry to push to",
                             hint="tag it like 127.0.0.1:5000/org/model:1")  # fmt: skip
        client = RegistryClient(reference.registry, plain_http=settings.plain_http or None)
        push_modelkit(reference, store, client=client)
        print(f"pushed {reference}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from devserver.oci.pull import pull_modelkit
    from devserver.oci.reference import parse_reference
    from devserver.oci.registry import RegistryClient
    from devserver.oci.store import LocalStore

    settings = settings_from(args)
    reference = parse_reference(args.reference)
    client = RegistryClient(reference.registry, plain_http=settings.plain_http or None)
    pulled = pull_modelkit(reference, LocalStore(settings.cache_dir), client=client, layers="all")
    print(f"pulled {reference} ({pulled.manifest_digest})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    handlers: dict[str, Any] = {
        "stop": cmd_stop, "status": cmd_status, "logs": cmd_logs, "pack": cmd_pack, "pull": cmd_pull,
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
