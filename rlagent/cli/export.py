"""`rlagent export`: a policy as a deployable folder (HF, ONNX; optionally INT8), with its size and a self-check.

    rlagent export --policy runs/quickstart/ppo/final --out exports/hf --format hf
    rlagent export --policy runs/quickstart/ppo/final --out exports/onnx-int8 --format onnx --quantize int8

Any export folder is a --policy for `rlagent eval`, `rlagent rollout` and `rlagent serve`. Exit status 1 when an
fp32 export's greedy tokens differ from the source's (a broken export); an INT8 export outside its tolerance only
warns (see rlagent.serving.export).
"""

from __future__ import annotations

import argparse
import json

from rlagent.serving.export import FORMATS, export_policy


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rlagent export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy", required=True, help="Model folder (stage final/, LoRA too), .gguf, short name, tiny."
    )
    parser.add_argument("--out", required=True, help="New folder to write the export to.")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="hf (plain HF folder) or onnx (ONNX Runtime).")
    parser.add_argument("--quantize", choices=["int8"], help="Dynamic INT8 quantisation of the linear layers.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    info = export_policy(args.policy, args.out, args.format, args.quantize)
    check = info["self_check"]
    kind = args.format + (" int8" if args.quantize else "")
    print(f"exported {args.policy} -> {args.out} ({kind}): {info['size_bytes'] / 2**20:.1f} MiB on disk")
    print(
        f"self-check ({check['prompts']} prompts, {check['max_new_tokens']} greedy tokens): "
        f"{check['identical']} identical, mean prefix agreement {check['mean_prefix_agreement']:.2f} "
        f"[{check['tolerance']}: {'passed' if check['passed'] else 'FAILED'}]"
    )
    print(json.dumps({key: info[key] for key in ("format", "quantize", "size_bytes")}))
    if not check["passed"] and not args.quantize:
        raise SystemExit(1)
    return info


if __name__ == "__main__":
    main()
