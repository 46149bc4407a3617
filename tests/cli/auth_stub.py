"""A stand-in API that refuses every `/v1` request with 401, exactly as the contract words it
(`PROMPTBATCH_API_KEYS` set, bearer key missing or wrong), for the CLI's error test.

Run: `python -m tests.cli.auth_stub --port 8002`.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

UNAUTHORIZED = {
    "error": {
        "type": "unauthorized",
        "message": "Missing or invalid API key.",
        "param": None,
    }
}


async def refuse(_: Request) -> Response:
    return JSONResponse(UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app() -> Starlette:
    methods = ["GET", "POST", "DELETE"]
    return Starlette(
        routes=[Route("/healthz", health), Route("/v1/{path:path}", refuse, methods=methods)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
