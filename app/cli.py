"""`switchyard serve | adapters | predict`: run the service, or talk to a running one."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `switchyard` console script."""
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the service (settings from SWITCHYARD_*)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", default="info")
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default="http://127.0.0.1:8000")
    client.add_argument("--key", help="API key (Bearer)")
    sub.add_parser("adapters", parents=[client], help="list adapters")
    predict = sub.add_parser("predict", parents=[client], help="predict with an adapter")
    predict.add_argument("adapter")
    predict.add_argument("inputs", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "adapters":
        _print(_call(args, "GET", "/v1/adapters"))
    else:
        _print(_call(args, "POST", f"/v1/adapters/{args.adapter}/predict", {"inputs": args.inputs}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from app.config import Settings
    from app.main import create_app

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"switchyard: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        # Idle keep-alive connections are closed after this (uvicorn's knob; a slow body is
        # bounded by the body-limit middleware's read deadline).
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
    )

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, with readiness turned to 503 the moment SIGTERM arrives."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Load balancers see 'draining' at once; uvicorn then stops accepting, lets
            # in-flight requests finish within the bound, and runs the lifespan shutdown,
            # where training jobs are interrupted cleanly.
            app.state.readiness = "draining"
            super().handle_exit(sig, frame)

    DrainingServer(config).run()
    return 0


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(args.url + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.key:
        request.add_header("Authorization", f"Bearer {args.key}")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


def _print(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    sys.exit(main())
