"""`rlagent ab-report LOGDIR`: per-arm results of an A/B test served by `rlagent serve --log LOGDIR`.

    rlagent ab-report served/                        # table + JSON on stdout
    rlagent ab-report served/ --out ab.json --pairs pairs.jsonl

Per arm: `requests` (served responses), `feedback` (responses with a POST /v1/feedback; the last one counts when a
response got several), `successes`, `success_rate` = successes / feedback, `success_ci95` (Wilson score interval,
z = 1.96, as `rlagent eval`) and, for arm b, `difference` (b - a) and `p_value` (two-sided Fisher exact test on the
2x2 table successes/failures x arm, scipy.stats.fisher_exact). Everything is recomputed from the two JSONL files, so
the report is reproducible from the log alone.

--pairs FILE writes preference pairs `{"prompt", "chosen", "rejected", "tools"}` (what `rlagent reward` reads) from
responses to the same prompt (same messages and tools) where one got success and the other failure.
"""

from __future__ import annotations

import argparse
import json
import os

from rlagent.cli.evaluate import FISHER_TEST, wilson_interval
from rlagent.common.config import ConfigError
from rlagent.serving.request_log import FEEDBACK, REQUESTS, read_jsonl


def outcomes(logdir: str) -> tuple[dict, dict]:
    """(served responses: id -> first logged row, feedback: id -> success of its LAST feedback row)."""
    served = {}
    for row in read_jsonl(os.path.join(logdir, REQUESTS)):
        served.setdefault(row["id"], row)
    feedback = {row["id"]: bool(row["success"]) for row in read_jsonl(os.path.join(logdir, FEEDBACK))}
    return served, feedback


def ab_report(logdir: str) -> dict:
    """The report of one log folder (see the module docstring)."""
    from scipy.stats import fisher_exact

    if not os.path.isfile(os.path.join(logdir, REQUESTS)):
        raise ConfigError(f"{logdir} has no {REQUESTS} (was the server started with --log {logdir}?)")
    served, feedback = outcomes(logdir)
    arms = {}
    for name in sorted({row["arm"] for row in served.values()}):
        ids = [i for i, row in served.items() if row["arm"] == name]
        rated = [feedback[i] for i in ids if i in feedback]
        k, n = sum(rated), len(rated)
        arms[name] = {
            "requests": len(ids),
            "feedback": n,
            "successes": k,
            "success_rate": k / n if n else None,
            "success_ci95": list(wilson_interval(k, n)),
            "versions": sorted({served[i]["version"] for i in ids}),
        }
    if "a" in arms and "b" in arms:
        a, b = arms["a"], arms["b"]
        table = [[a["successes"], a["feedback"] - a["successes"]], [b["successes"], b["feedback"] - b["successes"]]]
        b["p_value"] = float(fisher_exact(table, alternative="two-sided").pvalue)
        if a["feedback"] and b["feedback"]:
            b["difference"] = b["success_rate"] - a["success_rate"]
    return {
        "logdir": logdir,
        "arms": arms,
        "test": FISHER_TEST,
        "unmatched_feedback": len(set(feedback) - set(served)),
    }


def preference_pairs(logdir: str) -> list[dict]:
    """Pairs (chosen = a successful response, rejected = a failed one) of responses to the same prompt and tools."""
    served, feedback = outcomes(logdir)
    groups: dict[str, dict[bool, list]] = {}
    for response_id, row in served.items():
        if response_id in feedback:
            key = json.dumps([row["prompt"], row["tools"]], sort_keys=True)
            groups.setdefault(key, {True: [], False: []})[feedback[response_id]].append(row)
    pairs = []
    for group in groups.values():
        for good, bad in zip(group[True], group[False]):
            pairs.append(
                {
                    "prompt": good["prompt"],
                    "chosen": good["completion"],
                    "rejected": bad["completion"],
                    "tools": good["tools"],
                }
            )
    return pairs


def print_report(report: dict) -> None:
    print(f"A/B report of {report['logdir']} ({report['test']})")
    print(f"{'arm':<4} {'requests':>8} {'feedback':>8} {'success':>8} {'95% CI':>17} {'diff':>7} {'p':>8}  versions")
    for name, arm in report["arms"].items():
        rate = f"{arm['success_rate']:.1%}" if arm["success_rate"] is not None else "-"
        ci = f"[{arm['success_ci95'][0]:.1%}, {arm['success_ci95'][1]:.1%}]"
        diff = f"{arm['difference']:+.1%}" if "difference" in arm else ""
        p = f"{arm['p_value']:.3g}" if "p_value" in arm else ""
        print(
            f"{name:<4} {arm['requests']:>8} {arm['feedback']:>8} {rate:>8} {ci:>17} {diff:>7} {p:>8}  "
            f"{', '.join(arm['versions'])}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="rlagent ab-report", description=__doc__.splitlines()[0])
    parser.add_argument("logdir", help="The --log folder of `rlagent serve`.")
    parser.add_argument("--out", metavar="FILE.json", help="Also write the report as JSON.")
    parser.add_argument("--pairs", metavar="FILE.jsonl", help="Write preference pairs for `rlagent reward`.")
    args = parser.parse_args(argv)
    report = ab_report(args.logdir)
    print_report(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    if args.pairs:
        pairs = preference_pairs(args.logdir)
        with open(args.pairs, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
        print(f"wrote {len(pairs)} preference pairs to {args.pairs}")
    return report


if __name__ == "__main__":
    main()
