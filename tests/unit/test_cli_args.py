"""Options and key=value overrides in any order, for every CLI (config/cli.py), and one-line
usage errors. In-process: parsing only, nothing is trained."""

from __future__ import annotations

import pytest

from lmm_r1_ascend import eval as eval_cli
from lmm_r1_ascend import train
from lmm_r1_ascend.config.cli import CliParser, parse_cli, split_overrides

ORDERS = [
    ["trainer.max_steps=2", "--recipe", "fre_multi", "output_dir=x"],  # the command
    ["--recipe", "fre_multi", "trainer.max_steps=2", "output_dir=x"],
    ["trainer.max_steps=2", "output_dir=x", "--recipe", "fre_multi"],
    ["--recipe=fre_multi", "trainer.max_steps=2", "--no-progress", "output_dir=x"],
]


@pytest.mark.parametrize("argv", ORDERS)
def test_train_takes_overrides_before_and_after_options(argv):
    args = parse_cli(train._parser(), argv, overrides_dest="overrides")
    assert args.recipe == "fre_multi"
    assert args.overrides == ["trainer.max_steps=2", "output_dir=x"]  # in the order given: later ones win
    cfg = train.resolve_config(args)
    assert (cfg.trainer.max_steps, cfg.output_dir, cfg.recipe) == (2, "x", "fre_multi")


def test_a_one_value_option_keeps_a_value_that_looks_like_an_override():
    args = parse_cli(train._parser(), ["--config", "a=b.yaml", "seed=3", "--device", "cpu"], overrides_dest="overrides")
    assert (args.config, args.device, args.overrides) == ("a=b.yaml", "cpu", ["seed=3"])


def test_eval_list_option_does_not_swallow_overrides():
    argv = ["--data", "a.jsonl", "b.jsonl", "reward.workers=0", "--model", "demo-fre", "data.max_prompt_len=64",
            "--n", "4"]
    args = parse_cli(eval_cli._run_parser(), argv, overrides_dest="overrides")
    assert args.data == ["a.jsonl", "b.jsonl"] and args.model == "demo-fre" and args.n == 4
    assert args.overrides == ["reward.workers=0", "data.max_prompt_len=64"]
    again = parse_cli(eval_cli._run_parser(), ["reward.workers=0", "--n", "4", "--model", "demo-fre", "--data", "a.jsonl",
                                               "data.max_prompt_len=64"], overrides_dest="overrides")
    assert (again.data, again.overrides) == (["a.jsonl"], args.overrides)


def test_split_overrides_leaves_everything_else():
    rest, overrides = split_overrides(train._parser(), ["--stage", "fre", "a.b=1", "notakey", "-x=1", "x.y={a: 1}"])
    assert rest == ["--stage", "fre", "notakey", "-x=1"] and overrides == ["a.b=1", "x.y={a: 1}"]


def test_parity_subcommand_options_in_any_order():
    from lmm_r1_ascend.parity.__main__ import _parser

    a = parse_cli(_parser(), ["compare", "--rtol", "0.1", "a.json", "b.json", "--metric-tol", "kl=0.05,0.001"])
    b = parse_cli(_parser(), ["compare", "a.json", "--metric-tol", "kl=0.05,0.001", "b.json", "--rtol", "0.1"])
    assert vars(a) == vars(b) and (a.a, a.b, a.metric_tol) == ("a.json", "b.json", ["kl=0.05,0.001"])


def test_reward_cli_takes_any_order():
    from lmm_r1_ascend.rewards import cli as reward_cli

    a = parse_cli(reward_cli._parser(), ["--route", "geo=math", "--task", "math", "--file", "f.jsonl"])
    b = parse_cli(reward_cli._parser(), ["--file", "f.jsonl", "--task", "math", "--route", "geo=math"])
    assert vars(a) == vars(b) and a.route == ["geo=math"]


def test_positionals_around_an_option():
    """What eval compare (RUN [RUN ...]) and plot (RUN_DIR) rely on: intermixed parsing."""
    p = CliParser(prog="compare")
    p.add_argument("runs", nargs="+")
    p.add_argument("--png")
    args = parse_cli(p, ["run_a", "--png", "t.png", "run_b"])
    assert (args.runs, args.png) == (["run_a", "run_b"], "t.png")


@pytest.mark.parametrize("argv,needles", [
    (["--dryrun"], ["unrecognized arguments: --dryrun", "did you mean --dry-run?"]),
    (["--recipe"], ["argument --recipe: expected one argument"]),
    (["--stage", "xyz"], ["argument --stage: invalid choice: 'xyz'"]),
])
def test_usage_errors_are_one_line(capsys, argv, needles):
    with pytest.raises(SystemExit) as e:
        parse_cli(train._parser(), argv, overrides_dest="overrides")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in needles) and "--help" in lines[0]


def test_subcommand_parsers_inherit_one_line_errors(capsys):
    from lmm_r1_ascend.parity.__main__ import _parser

    with pytest.raises(SystemExit):
        parse_cli(_parser(), ["compare", "a.json", "b.json", "--rtoll", "1"])
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "did you mean --rtol?" in err, err


def test_parser_class_is_shared():
    assert isinstance(train._parser(), CliParser) and isinstance(eval_cli._run_parser(), CliParser)
