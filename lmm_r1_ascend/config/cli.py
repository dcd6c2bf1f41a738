"""Argument parsing shared by every CLI: options and key=value overrides in any order, and
one-line errors.

    python -m lmm_r1_ascend.train trainer.max_steps=2 --recipe fre_multi output_dir=x

parses like `--recipe fre_multi trainer.max_steps=2 output_dir=x` (argparse's intermixed
parsing, as TRL / torchtune / Hydra-style CLIs accept). A key=value token is an override
even right after an option that takes a list (`--data a.jsonl b.jsonl reward.workers=0`),
but never when it is the value of an option that takes exactly one (`--config a=b.yaml`).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
from typing import Sequence

# a dotted config key followed by '=': trainer.max_steps=10, output_dir=x, reward.routes={...}
OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


class CliParser(argparse.ArgumentParser):
    """argparse with errors on one line (`error: ...`, exit status 2) and a did-you-mean for
    a mistyped option. Subcommand parsers made with add_subparsers are CliParsers too."""

    def error(self, message: str):  # noqa: D401 (argparse's signature)
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            options = sorted(_long_options(self))
            for token in unknown.group(1).split():
                close = difflib.get_close_matches(token.split("=")[0], options, n=1) if token.startswith("-") else []
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.exit(2, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every --option of `parser` and of its subcommands (their leftovers are reported by the top parser)."""
    found = {o for o in parser._option_string_actions if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _long_options(sub)
    return found


def _takes_one_value(parser: argparse.ArgumentParser, token: str) -> bool:
    """True when `token` is an option that consumes exactly the next argument (store, append)."""
    action = parser._option_string_actions.get(token)
    return action is not None and action.nargs in (None, 1)


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the key=value overrides in the order given). A token is an override
    when it looks like `dotted.key=value` and is not the value of a one-value option."""
    rest, overrides = [], []
    previous = None
    for token in argv:
        if token == "--":
            rest.append(token)
            previous = token
            continue
        if OVERRIDE.match(token) and not (previous is not None and _takes_one_value(parser, previous)):
            overrides.append(token)
        else:
            rest.append(token)
        previous = token
    return rest, overrides


def parse_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
              overrides_dest: str | None = None) -> argparse.Namespace:
    """Parse `argv` (default sys.argv[1:]) with options and positionals in any order.

    overrides_dest: the name of a `nargs="*"` positional that collects key=value overrides;
    those tokens are taken out first wherever they stand (so a list option cannot swallow
    them) and come back in `args.<overrides_dest>` in the order given. Parsers with
    subcommands parse as usual (argparse already takes a subcommand's options in any order)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" not in parser._option_string_actions and "-v" not in parser._option_string_actions:
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="also show third-party libraries' start-up notices (e.g. DeepSpeed's accelerator line)")
    overrides: list[str] = []
    if overrides_dest is not None:
        argv, overrides = split_overrides(parser, argv)
    if parser._subparsers is not None:
        args = parser.parse_args(argv)
    else:
        args = parser.parse_intermixed_args(argv)
    if overrides_dest is not None:
        setattr(args, overrides_dest, overrides + list(getattr(args, overrides_dest) or []))
    quiet_third_party(verbose=bool(getattr(args, "verbose", False)))
    return args


# Third-party start-up notices that say nothing about the run: (logger, the message's start, or ""
# for any message below `shown_from`; the level from which records always show). DeepSpeed logs its
# accelerator detection at WARNING on stdout when first imported without DS_ACCELERATOR (plan,
# doctor); Ray announces its local instance and its default token authentication when the trainer
# starts it; MLflow announces at INFO that it creates its SQLite tables.
STARTUP_NOTICES = (
    ("DeepSpeed", "Setting accelerator to CPU", logging.ERROR),
    ("ray._private.worker", "Started a local Ray instance", logging.WARNING),
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster", logging.ERROR),
    ("mlflow.store.db.utils", "", logging.WARNING),
)


class _StartupNoticeFilter(logging.Filter):
    def __init__(self, start: str, shown_from: int):
        super().__init__()
        self.start, self.shown_from = start, shown_from

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.shown_from or not str(record.msg).startswith(self.start)


def quiet_third_party(verbose: bool = False) -> None:
    """Keep third-party start-up notices (STARTUP_NOTICES) off the console unless verbose; every
    other warning of those libraries still shows, and errors always do. Filters are put on the
    named loggers before the libraries are imported (logging.getLogger returns the same logger
    to the library), so the notice printed at import never appears."""
    for name, start, shown_from in STARTUP_NOTICES:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, _StartupNoticeFilter)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_StartupNoticeFilter(start, shown_from))


def quiet_library_progress(verbose: bool = False) -> None:
    """Silence the Hugging Face libraries' own progress bars ("Loading weights", "Writing model
    shards", hub downloads) unless verbose, so the trainer's bar owns the screen. Set in the
    environment, so Ray rank processes started from here inherit it; an explicit
    HF_HUB_DISABLE_PROGRESS_BARS in the environment wins."""
    if verbose or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers.utils.logging" in sys.modules:  # imported already: its switch was read at import
        sys.modules["transformers.utils.logging"].disable_progress_bar()
    if "huggingface_hub.utils" in sys.modules:
        sys.modules["huggingface_hub.utils"].disable_progress_bars()
