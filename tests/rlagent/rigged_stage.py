"""A stand-in stage for the sweep tests: `python rigged_stage.py [--config F] output_dir=DIR x=V [steps=N] [delay=S]`.

It logs `score` = x at every step to metrics.jsonl (one row per `delay` seconds) and writes summary.json with
`score` = x, so a trial's quality is known before it runs: the tests rig which trials are bad.
"""

import json
import os
import sys
import time


def main(argv: list[str]) -> None:
    args = dict(item.split("=", 1) for item in argv if "=" in item)
    out, x = args["output_dir"], float(args["x"])
    steps, delay = int(args.get("steps", 30)), float(args.get("delay", 0.1))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "a") as handle:
        for step in range(1, steps + 1):
            handle.write(json.dumps({"step": step, "score": x}) + "\n")
            handle.flush()
            time.sleep(delay)
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump({"score": x, "steps": steps}, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
