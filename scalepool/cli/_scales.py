"""``scalepool table``: the scale layer's methods on cached branch predictions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .._files import write_json
from ..scales import add_scale_arguments


def register(commands) -> None:
    table = commands.add_parser(
        "table",
        help="test-split MAE table of every scale-layer method with its null control (meV/Å)",
        description="Evaluate on the test split of prediction caches (written by 'scalepool predict'): each "
        "branch alone, the best global scale (chosen on val), oracle hard routing over {0, 1}, the "
        "continuous oracle, the oracle over a pool refined on val and over that pool after differentiable "
        "updates, a learned hard router and a learned continuous router (both fitted on train only). "
        "Rows marked '(upper bound)' read the test labels. Several caches (seeds) give mean and std. "
        "Every method is repeated on a null pair (by default short and short_2, two runs of one branch, "
        "when every cache holds short_2): rows 'null: ...'; 'excess over null' is the real pair's gain over "
        "its better single branch minus the null pair's, in percentage points.",
    )
    table.add_argument(
        "--pred",
        required=True,
        nargs="+",
        type=Path,
        metavar="PRED.npz",
        help="prediction cache(s); several are treated as seeds",
    )
    table.add_argument("--csv", type=Path, default=None, help="write the table as CSV (a 'method' column)")
    table.add_argument(
        "--history", type=Path, default=None, help="folder for each cache's pool refinement history (JSON)"
    )
    add_scale_arguments(table, "granularity", "loss", "tol", "max_size", "router_steps")
    table.add_argument("--seed", type=int, default=0, help="router initialisation seed")
    table.add_argument(
        "--null-pair",
        default="auto",
        metavar="A,B|auto|none",
        help="null control pair of branches (default auto: <anchor0>,<anchor0>_2 when every cache has it)",
    )
    table.add_argument(
        "--device", default="cpu", help="torch device for routers and soft updates (cpu, cuda)"
    )
    table.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    table.set_defaults(func=_table)


def _table(args: argparse.Namespace) -> int:
    import torch

    from ..data import PredictionCache
    from ..scales import format_table, parse_null_pair, scale_table

    if args.threads:
        torch.set_num_threads(args.threads)
    caches = [PredictionCache.load(path) for path in args.pred]
    for path, cache in zip(args.pred, caches, strict=True):
        cache.meta["source"] = str(path)  # names the file in scale_table's errors (not written anywhere)
    start = time.perf_counter()
    df, details = scale_table(
        caches,
        granularity=args.granularity,
        loss=args.loss,
        tol=args.tol,
        max_size=args.max_size,
        router_steps=args.router_steps,
        seed=args.seed,
        device=args.device,
        return_details=True,
        null_pair=parse_null_pair(args.null_pair),
    )
    print(format_table(df))
    print(df.attrs["null_note"])
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.history is not None:
        args.history.mkdir(parents=True, exist_ok=True)
        for path, detail in zip(args.pred, details, strict=True):
            out = detail["history"].save(args.history / f"{path.stem}.refinement.json")
            summary = {
                "pool": list(detail["pool"]),
                "soft_pool": list(detail["soft_pool"]),
                "best_global_s": detail["best_global_s"],
                "timings_s": detail["timings_s"],
            }
            write_json(args.history / f"{path.stem}.summary.json", summary)
            print(f"wrote {out}")
    return 0
