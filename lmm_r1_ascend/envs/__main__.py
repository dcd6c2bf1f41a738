"""``python -m lmm_r1_ascend.envs {generate,solve,render,football} ...``: the Sokoban CLI (and Football task rows)."""

from __future__ import annotations

from lmm_r1_ascend.config.cli import CliParser, parse_cli
import json
import sys

from lmm_r1_ascend.envs.sokoban import load_level
from lmm_r1_ascend.envs.sokoban_generate import write_dataset
from lmm_r1_ascend.envs.sokoban_render import save_png
from lmm_r1_ascend.envs.sokoban_solver import solve


def main(argv: list[str] | None = None) -> int:
    ap = CliParser(prog="python -m lmm_r1_ascend.envs", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write .npy levels, PNG frames and LMM-R1 jsonl rows")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--n", type=int, default=8, help="number of levels")
    g.add_argument("--boxes", type=int, default=2, choices=(1, 2, 3, 4), help="boxes per level (2: small-v0, 3: small-v1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dim", type=int, default=7, help="room side (7 in the recipe)")
    g.add_argument("--cell", type=int, default=32, help="pixels per cell in the PNG")
    g.add_argument("--jsonl", default="sokoban.jsonl", help="name of the jsonl file inside --out")
    g.add_argument("--multiturn", action="store_true",
                   help="rows for step-by-step play (env.name=sokoban): instructions only, the board is the env's")
    s = sub.add_parser("solve", help="print the BFS-shortest plan of a level")
    s.add_argument("--level", required=True)
    r = sub.add_parser("render", help="render a level to PNG")
    r.add_argument("--level", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--cell", type=int, default=32)
    f = sub.add_parser("football", help="write task rows for the Football env (env.name=football)")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--n", type=int, default=64, help="number of episodes (rows)")
    f.add_argument("--scenario", default="academy_run_to_score_with_keeper", help="a gfootball scenario")
    f.add_argument("--actions-per-turn", type=int, default=1, help="as the env's actions_per_turn")
    f.add_argument("--jsonl", default="football.jsonl", help="name of the jsonl file inside --out")
    args = parse_cli(ap, argv)
    try:
        if args.cmd == "generate":
            if args.multiturn:
                from lmm_r1_ascend.envs.sokoban_env import write_multiturn_dataset

                rows = write_multiturn_dataset(args.out, args.n, args.boxes, args.seed, args.dim, args.cell, args.jsonl)
            else:
                rows = write_dataset(args.out, args.n, args.boxes, args.seed, args.dim, args.cell, args.jsonl)
            print(json.dumps({"levels": len(rows), "jsonl": f"{args.out}/{args.jsonl}",
                              "min_actions": [r["min_actions"] for r in rows]}))
        elif args.cmd == "football":
            from lmm_r1_ascend.envs.football import write_football_tasks

            rows = write_football_tasks(args.out, args.n, args.scenario, args.actions_per_turn, args.jsonl)
            print(json.dumps({"episodes": len(rows), "jsonl": f"{args.out}/{args.jsonl}", "scenario": args.scenario}))
        elif args.cmd == "solve":
            plan = solve(load_level(args.level))
            print(json.dumps({"level": args.level, "solvable": plan is not None,
                              "plan": ", ".join(plan) if plan is not None else None}))
        else:
            print(save_png(load_level(args.level), args.out, args.cell))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
