"""Shipping benchmark: torch fp32 vs torch bf16 vs ONNX Runtime fp32 vs ONNX Runtime INT8 on the SmolLM2 SFT policy.

    .venv/bin/python bench/serving.py                       # policy: runs/smollm2/sft/final (built if absent)
    .venv/bin/python bench/serving.py --policy runs/smollm2/sft/final --episodes 200
    .venv/bin/python bench/serving.py --quick               # smoke size (2-layer SmolLM2, few episodes)

The policy is exported with `rlagent export` (hf fp32, onnx, onnx --quantize int8; each self-checked) and every
variant then runs in its own process, so its peak RSS is its own:
- generated tokens/s (and per CPU-second) at concurrency 1 and 16: greedy decode of Calculator-v0 test prompts
  through the variant's generation backend, in batches of 1 and of 16 (the torch backends keep their shared-prompt
  prefix cache, as `rlagent serve` does; ONNX Runtime has none);
- held-out success (greedy, test split) on Calculator-v0 and KBSearch-v0, --episodes each, with Wilson intervals;
- server latency p50/p99 at concurrency 1/4/16: `rlagent serve`'s app on 127.0.0.1, --requests chat completions
  per level sent by that many client threads;
- peak RSS of the process, and size on disk (torch bf16: the bf16 weights saved with save_pretrained).
Prints RESULT lines for bench/run_all.py. Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [REPO_DIR, BENCH_DIR]

from report import banner  # noqa: E402

VARIANTS = ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8")
ENVS = ("rlagent/Calculator-v0", "rlagent/KBSearch-v0")
DEFAULT_POLICY = os.path.join(REPO_DIR, "runs", "smollm2", "sft", "final")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", help="SFT policy (default runs/smollm2/sft/final; built by rlagent sft if absent)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; torch_int8 is also known")
    parser.add_argument("--episodes", type=int, default=200, help="held-out episodes per environment")
    parser.add_argument("--prompts", type=int, default=32, help="prompts decoded for tokens/s")
    parser.add_argument("--requests", type=int, default=32, help="server requests per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest turn (throughput and server)")
    parser.add_argument("--work-dir", help="where the exports go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="2-layer SmolLM2 SFT copy, 4 episodes, 8 prompts")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one variant on --path
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.prompts, args.requests, args.max_new_tokens = 4, 8, 8, 16
    return args


def default_policy(quick: bool) -> str:
    if quick:
        from fixtures import sft_policy

        return sft_policy(max_steps=10, model="smollm2", layers=2)
    if not os.path.isdir(DEFAULT_POLICY):
        cmd = [sys.executable, "-m", "rlagent.cli", "sft", "--config", "configs/smollm2/sft.yaml", "progress=false"]
        print(f"   building the SFT policy: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO_DIR, stdout=subprocess.DEVNULL)
    return DEFAULT_POLICY


# ---------------------------------------------------------------------------------------------------------------------
# One variant, in its own process


def load_variant(variant: str, path: str):
    """(generation backend, tokenizer) of a variant, loaded as `rlagent serve` loads it."""
    from rlagent.common.modeling import load_tokenizer
    from rlagent.rollout.backends import build_backend
    from rlagent.rollout.exported import export_info
    from rlagent.rollout.policies import load_eval_model, load_export_backend

    if variant.startswith("torch_") and variant != "torch_int8":
        model, tokenizer = load_eval_model(path)
        dtype = "bfloat16" if variant == "torch_bf16" else "float32"
        return build_backend("hf", model.float(), tokenizer, dtype), tokenizer
    tokenizer = load_tokenizer(path, "--policy")
    return load_export_backend(path, export_info(path), tokenizer), tokenizer


def throughput(backend, tokenizer, prompts: list[list[int]], concurrency: int, max_new_tokens: int) -> dict:
    from rlagent.rollout.backends import GenerationRequest, SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=(tokenizer.eos_token_id,), greedy=True)
    backend.generate([GenerationRequest("warm", prompts[0])], params)
    tokens, wall, cpu = 0, time.perf_counter(), time.process_time()
    for start in range(0, len(prompts), concurrency):
        chunk = prompts[start : start + concurrency]
        outputs = backend.generate([GenerationRequest((start, i), p) for i, p in enumerate(chunk)], params)
        tokens += sum(len(out.token_ids) for out in outputs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"tokens": tokens, "tokens_per_s": round(tokens / wall, 2), "tokens_per_cpu_s": round(tokens / cpu, 2)}


def held_out(backend, tokenizer, episodes: int, max_new_tokens: int) -> dict:
    from rlagent.cli.evaluate import evaluate_policy
    from rlagent.rollout.decoding import ModelPolicy

    out = {}
    for env_id in ENVS:
        policy = ModelPolicy(None, tokenizer, max_new_tokens=96, greedy=True, backend=backend)
        result = evaluate_policy(policy, tokenizer, env_id, episodes, seed=0, batch_size=16)
        out[env_id] = {key: result[key] for key in ("success_rate", "success_ci95", "successes", "episodes")}
    return out


def server_latency(backend, tokenizer, requests: int, max_new_tokens: int) -> dict:
    """p50/p99 seconds per chat completion at concurrency 1/4/16 against the in-process server."""
    import httpx
    import numpy as np
    import uvicorn
    from fixtures import calculator_episodes

    from rlagent.serving.app import ServerState, create_app
    from rlagent.serving.policy_slots import Arm, Slot

    state = ServerState({"a": Arm("a", Slot("bench", "bench", backend, tokenizer))})
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1/chat/completions"
    infos = calculator_episodes(requests, split="test")
    out = {}
    try:
        for concurrency in (1, 4, 16):

            def one(info):
                body = {"messages": info["messages"], "tools": info["tools"], "max_tokens": max_new_tokens,
                        "temperature": 0}  # fmt: skip
                started = time.perf_counter()
                httpx.post(url, json=body, timeout=600).raise_for_status()
                return time.perf_counter() - started

            with ThreadPoolExecutor(concurrency) as pool:
                latencies = list(pool.map(one, infos))
            out[f"c{concurrency}"] = {"p50_s": round(float(np.percentile(latencies, 50)), 3),
                                      "p99_s": round(float(np.percentile(latencies, 99)), 3)}  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        state.close()
    return out


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across exec, so a worker
    started by a parent that peaked higher (the exports) would report the parent's peak."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)


def worker(args: argparse.Namespace) -> None:
    from fixtures import calculator_prompts

    backend, tokenizer = load_variant(args.worker, args.path)
    prompts = calculator_prompts(tokenizer, args.prompts, split="test")
    result = {"variant": args.worker, "path": args.path}
    for concurrency in (1, 16):
        result[f"c{concurrency}"] = throughput(backend, tokenizer, prompts, concurrency, args.max_new_tokens)
    result["held_out"] = held_out(backend, tokenizer, args.episodes, args.max_new_tokens)
    result["latency"] = server_latency(backend, tokenizer, args.requests, args.max_new_tokens)
    result["peak_rss_mib"] = peak_rss_mib()
    print("VARIANT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Exports, one process per variant, summary


def export_all(policy: str, work: str, variants: list[str]) -> dict[str, dict]:
    """variant -> {"path", "size_bytes", "self_check"}; every export is made from the merged hf fp32 export."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlagent.serving.export import export_policy, folder_size

    hf = os.path.join(work, "hf")
    exports = {"torch_fp32": export_policy(policy, hf, "hf")}
    exports["torch_fp32"]["path"] = hf
    if "torch_bf16" in variants:
        bf16 = os.path.join(work, "bf16")
        AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16).save_pretrained(bf16)
        exports["torch_bf16"] = {"path": hf, "size_bytes": folder_size(bf16) + tokenizer_bytes(hf)}
    for variant, fmt, quantize in (("ort_fp32", "onnx", None), ("ort_int8", "onnx", "int8"),
                                   ("torch_int8", "hf", "int8")):  # fmt: skip
        if variant in variants:
            out = os.path.join(work, variant)
            exports[variant] = {**export_policy(hf, out, fmt, quantize), "path": out}
    return exports


def tokenizer_bytes(folder: str) -> int:
    names = [n for n in os.listdir(folder) if n.startswith(("tokenizer", "special_tokens", "chat_template", "vocab"))]
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def run_variant(variant: str, path: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--path", path,
           "--episodes", str(args.episodes), "--prompts", str(args.prompts), "--requests", str(args.requests),
           "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("VARIANT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("VARIANT ") :])


def summary(results: dict[str, dict]) -> dict:
    """INT8 (ONNX Runtime) against torch fp32: tokens/s ratios, size ratio, success differences."""
    base, int8 = results.get("torch_fp32"), results.get("ort_int8")
    if not base or not int8:
        return {}
    out = {f"int8_vs_fp32_tokens_per_s_c{c}": round(int8[f"c{c}"]["tokens_per_s"] / base[f"c{c}"]["tokens_per_s"], 3)
           for c in (1, 16)}  # fmt: skip
    out["int8_vs_fp32_size"] = round(int8["size_bytes"] / base["size_bytes"], 3)
    for env_id in ENVS:
        diff = int8["held_out"][env_id]["success_rate"] - base["held_out"][env_id]["success_rate"]
        out[f"int8_minus_fp32_success/{env_id}"] = round(diff, 4)
    return out


def print_row(r: dict) -> None:
    success = " ".join(f"{env.split('/')[1]} {r['held_out'][env]['success_rate']:.1%}" for env in ENVS)
    latency = " ".join(f"c{c} {r['latency'][f'c{c}']['p50_s']}/{r['latency'][f'c{c}']['p99_s']}" for c in (1, 4, 16))
    print(f"   {r['variant']:<10} tok/s c1 {r['c1']['tokens_per_s']:>7} c16 {r['c16']['tokens_per_s']:>7} | "
          f"RSS {r['peak_rss_mib']:>7} MiB | disk {r['size_bytes'] / 2**20:7.1f} MiB | {success} | "
          f"p50/p99 s {latency}", flush=True)  # fmt: skip


def main() -> None:
    args = parse()
    if args.worker:
        return worker(args)
    banner("shipping: torch fp32 / torch bf16 / ONNX Runtime fp32 / ONNX Runtime INT8 (SmolLM2 SFT policy)")
    policy = args.policy or default_policy(args.quick)
    variants = args.variants.split(",")
    work = args.work_dir or tempfile.mkdtemp(prefix="rlagent-serving-bench-")
    print(
        f"   policy {policy} · episodes {args.episodes}/env · prompts {args.prompts} · "
        f"requests {args.requests}/level · max_new_tokens {args.max_new_tokens} · exports in {work}",
        flush=True,
    )
    exports = export_all(policy, work, variants)
    for variant, info in exports.items():
        check = info.get("self_check")
        print(f"   export {variant}: {info['size_bytes'] / 2**20:.1f} MiB" + (
            f", self-check {check['identical']}/{check['prompts']} identical, prefix agreement "
            f"{check['mean_prefix_agreement']}" if check else ""), flush=True)  # fmt: skip
    results = {}
    for variant in variants:
        results[variant] = {**run_variant(variant, exports[variant]["path"], args),
                            "size_bytes": exports[variant]["size_bytes"],
                            "self_check": exports[variant].get("self_check")}  # fmt: skip
        print_row(results[variant])
    print("RESULT " + json.dumps({"policy": policy, "episodes": args.episodes, "prompts": args.prompts,
                                  "requests": args.requests, "max_new_tokens": args.max_new_tokens,
                                  "variants": results, "summary": summary(results)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
