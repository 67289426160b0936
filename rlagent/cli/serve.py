"""`rlagent serve`: an OpenAI-compatible chat-completions server for a policy (FastAPI + uvicorn).

    rlagent serve --policy runs/quickstart/ppo/final --port 8000
    rlagent serve --policy exports/onnx-int8 --policy-b runs/new/final --split 0.5 --log served/
    rlagent serve --policy runs/ppo/final --watch runs/ppo/checkpoints     # hot reload of newer checkpoints

Then any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")`. Routes, A/B and
reload semantics: rlagent.serving.app. Concurrent requests with the same max_tokens/temperature are decoded in one
batch (--max-batch rows, gathered for --batch-wait-ms). `rlagent ab-report LOGDIR` summarises an A/B test.
"""

from __future__ import annotations

import argparse
import threading

from rlagent.common.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, arg_type


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent serve", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="Arm a: model folder, export, checkpoint, .gguf, name, tiny.")
    parser.add_argument("--policy-b", help="Arm b for an A/B test (same kinds of spec as --policy).")
    parser.add_argument("--split", type=arg_type(float, FRACTION), default=0.5, help="Fraction of users sent to b.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=arg_type(int, AT_LEAST_ONE), default=8000, help="Port to listen on.")
    parser.add_argument("--watch", metavar="DIR", help="RUN/checkpoints: serve each newer complete checkpoint/final.")
    parser.add_argument("--watch-interval", type=arg_type(float, POSITIVE), default=5.0, help="Seconds between polls.")
    parser.add_argument("--log", metavar="DIR", help="Write served conversations and feedback as JSONL here.")
    parser.add_argument("--max-batch", type=arg_type(int, AT_LEAST_ONE), default=16, help="Rows per decode batch.")
    parser.add_argument(
        "--batch-wait-ms",
        type=arg_type(float, NON_NEGATIVE),
        default=5.0,
        help="How long a batch waits for more requests after its first.",
    )
    parser.add_argument("--max-tokens", type=arg_type(int, AT_LEAST_ONE), default=256, help="Default max_tokens.")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="Weights of torch policies (auto: bf16 where the hardware computes it natively).",
    )
    parser.add_argument("--seed", type=int, default=None, help="Seed of the random arm choice for requests w/o user.")
    return parser.parse_args(argv)


def build_state(args: argparse.Namespace):
    """Load the arms and wrap them in a ServerState (the tests build servers through this too)."""
    from rlagent.serving.app import ServerState
    from rlagent.serving.policy_slots import Arm, load_slot
    from rlagent.serving.request_log import RequestLog

    arms = {}
    for name, spec in (("a", args.policy), ("b", args.policy_b)):
        if spec:
            slot = load_slot(spec, f"v1:{spec.rstrip('/').rsplit('/', 1)[-1]}", args.dtype)
            arms[name] = Arm(name, slot, args.max_batch, args.batch_wait_ms / 1000)
    log = RequestLog(args.log) if args.log else None
    return ServerState(arms, args.split, log, args.watch, args.dtype, args.max_tokens, args.seed)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from rlagent.serving.app import create_app

    args = parse(argv)
    state = build_state(args)
    if args.watch:
        threading.Thread(target=state.watch_loop, args=(args.watch_interval,), daemon=True).start()
    versions = ", ".join(f"{name}={arm.slot.version}" for name, arm in state.arms.items())
    print(f"rlagent serve: {versions} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    finally:
        state.close()


if __name__ == "__main__":
    main()
