"""Google Research Football (gfootball) as a multi-turn environment, after MageBench's harness.

Each turn the policy names 1 to ``actions_per_turn`` actions of gfootball's 20-action set
("v2": idle, the 8 directions, long / high / short pass, shot, sprint, release_direction,
release_sprint, sliding, dribble, release_dribble, builtin_ai), as
``<answer> shot </answer>`` or ``<answer> action_right, action_shot </answer>`` (MageBench's
``action_`` names are accepted too). Each action is held for ``frames_per_action`` game
frames. The observation is the rendered RGB frame, downscaled so its longer side is at most
``max_side`` pixels, with the score and the frames left as text.

Reward: gfootball's own ``rewards`` string, by default ``"scoring,checkpoints"``: +1 for a
goal scored, -1 for one conceded, and +0.1 for each of ten distance checkpoints on the way to
the opponent's goal while the controlled player has the ball (gfootball's
CheckpointRewardWrapper). MageBench shapes its own reward instead (ball progress, opponents
passed, goals, turnovers, pass and shot quality); that shaping is not reproduced here.
info: invalid_action, score [left, right], success (the left team leads), frames (played so
far), actions (applied this turn). Done: gfootball's episode end (academy scenarios end on a
goal, a turnover or the ball going out), or ``max_invalid`` invalid turns.

gfootball renders one game per process and lives in its own virtual environment, so the
game runs in a worker process (envs/football_worker.py) started with ``python`` (default:
$LMM_FOOTBALL_PYTHON, else this interpreter). Headless: with no $DISPLAY an Xvfb server is
started once per process (Mesa renders through llvmpipe on the CPU). See docs/agents.md.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from PIL import Image

from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.registry import register_env

ACTIONS = ("idle", "left", "top_left", "top", "top_right", "right", "bottom_right", "bottom", "bottom_left",
           "long_pass", "high_pass", "short_pass", "shot", "sprint", "release_direction", "release_sprint",
           "sliding", "dribble", "release_dribble", "builtin_ai")  # gfootball's "v2" action set, in its order
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
FIRST_TEXT = ("You control the active player of the yellow team (the one with the ball or nearest to it) and "
              "attack the goal on the right. Each turn give {how_many} from: {names}, as "
              "<think> ... </think><answer> {example} </answer>. I show you the game after {them}.")
_display: subprocess.Popen | None = None
_idle: list[tuple[str, subprocess.Popen, Connection, Connection]] = []  # game processes a closed env left running


def how_many_actions(k: int) -> str:
    """How many actions a turn may name, as the prompts say it: "1 action", or "1 to k actions"."""
    return "1 action" if k == 1 else f"1 to {k} actions"


def first_text(k: int) -> str:
    """The first observation's text for ``k`` actions per turn."""
    return FIRST_TEXT.format(how_many=how_many_actions(k), names=", ".join(ACTIONS),
                             example="action" if k == 1 else "action, action", them="it" if k == 1 else "them")


def parse_football_actions(text: str, limit: int) -> list[str] | None:
    """The action names of the last <answer>, or None when it is missing, empty, names an unknown
    action, or gives more than ``limit``."""
    found = _ANSWER.findall(text) if isinstance(text, str) else []
    if not found:
        return None
    names = [a.strip().lower().removeprefix("action_") for a in found[-1].split(",")]
    if not 1 <= len(names) <= limit or any(n not in ACTIONS for n in names):
        return None
    return names


def _ensure_display() -> str:
    """$DISPLAY, or an Xvfb server started once for this process (its display)."""
    global _display
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    if _display is None or _display.poll() is not None:
        if shutil.which("Xvfb") is None:
            raise RuntimeError("football env: no $DISPLAY and no Xvfb to render headless (apt-get install xvfb)")
        number = 90 + os.getpid() % 1000
        _display = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        if _display.poll() is not None:
            raise RuntimeError(f"football env: Xvfb :{number} exited at start (code {_display.returncode})")
        _display.display = f":{number}"  # type: ignore[attr-defined]
        atexit.register(_stop, _display)
    return _display.display  # type: ignore[attr-defined]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@register_env("football")
class FootballEnv(Environment):
    """See the module docstring. Constructor kwargs are the recipe's ``env.kwargs``.

    scenario: a gfootball scenario (academy_empty_goal_close, academy_run_to_score_with_keeper,
        11_vs_11_easy_stochastic, ...); a task's ``scenario`` overrides it.
    rewards: gfootball's reward string. actions_per_turn: most actions one turn may name.
    frames_per_action: game frames each action is held for. max_side: longest side of the
    observed frame. render_width: gfootball's render resolution (height 9/16 of it).
    max_invalid: invalid turns that end the episode. reply_timeout_s: longest wait for the game.
    """

    def __init__(self, scenario: str = "academy_empty_goal_close", rewards: str = "scoring,checkpoints",
                 actions_per_turn: int = 1, frames_per_action: int = 4, max_side: int = 256,
                 render_width: int = 512, max_invalid: int = 3, python: str | None = None,
                 reply_timeout_s: float = 120.0) -> None:
        for key, v, lo in (("actions_per_turn", actions_per_turn, 1), ("frames_per_action", frames_per_action, 1),
                           ("max_side", max_side, 16), ("render_width", render_width, 64),
                           ("max_invalid", max_invalid, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"football env: {key} must be an int >= {lo}, got {v!r}")
        self.scenario, self.rewards = scenario, rewards
        self.actions_per_turn, self.frames_per_action = actions_per_turn, frames_per_action
        self.max_side, self.render_width, self.max_invalid = max_side, render_width, max_invalid
        self.python = python or os.environ.get("LMM_FOOTBALL_PYTHON") or sys.executable
        self.reply_timeout_s = float(reply_timeout_s)
        self.proc: subprocess.Popen | None = None
        self.frame: Image.Image | None = None
        self.facts: dict[str, Any] = {}
        self.invalid = self.frames = 0

    # -- the worker process -----------------------------------------------------------------
    def _start(self) -> None:
        """Take an idle game process of the same interpreter (its game is already loaded: a first
        reset costs tens of seconds on a CPU), else start one."""
        while _idle:
            python, proc, out, inbox = _idle.pop()
            if python == self.python and proc.poll() is None:
                self.proc, self._out, self._in = proc, out, inbox
                self._finalizer = weakref.finalize(self, _stop, proc)
                return
            _stop(proc)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, "DISPLAY": _ensure_display()}
        worker = Path(__file__).with_name("football_worker.py")
        self.proc = subprocess.Popen([self.python, str(worker), str(to_child_r), str(from_child_w)],
                                     pass_fds=(to_child_r, from_child_w), env=env, stdout=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        atexit.register(_stop, self.proc)
        self._out, self._in = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        self._finalizer = weakref.finalize(self, _stop, self.proc)  # a dropped or abandoned env kills its game

    def _ask(self, *msg: Any) -> tuple:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self._out.send(msg)
        if not self._in.poll(self.reply_timeout_s):
            _stop(self.proc)
            raise RuntimeError(f"football env: the game did not answer {msg[0]} within {self.reply_timeout_s:g} s")
        try:
            reply = self._in.recv()
        except EOFError:
            raise RuntimeError(f"football env: the game process ({self.python}) exited with code "
                               f"{self.proc.wait(timeout=10)}; is gfootball installed for it?") from None
        if reply[0] != "ok":
            raise RuntimeError(f"football env: {reply[1]}")
        return reply

    # -- the Environment interface ----------------------------------------------------------
    def _observation(self, text: str) -> Observation:
        score = self.facts.get("score", [0, 0])
        return Observation(text=f"{text}\nScore {score[0]}-{score[1]}, {self.facts.get('steps_left', 0)} frames left.",
                           images=(self.frame,))

    def reset(self, seed: int, task: Mapping[str, Any]) -> Observation:
        scenario = str(task.get("scenario") or self.scenario) if isinstance(task, Mapping) else self.scenario
        _, frame, self.facts = self._ask("reset", scenario, int(seed) % (2**31), self.rewards, self.render_width,
                                         self.max_side)
        self.frame, self.invalid, self.frames = Image.fromarray(frame), 0, 0
        return self._observation(first_text(self.actions_per_turn))

    def step(self, action_text: str) -> StepResult:
        if self.frame is None:
            raise RuntimeError("football env: call reset() before step()")
        names = parse_football_actions(action_text, self.actions_per_turn)
        if names is None:
            self.invalid += 1
            info = {"invalid_action": True, "score": self.facts["score"], "success": False, "frames": self.frames,
                    "actions": []}
            text = (f"Invalid answer: give {how_many_actions(self.actions_per_turn)} from the list as "
                    "<answer> action </answer>. Nothing happened.")
            return StepResult(self._observation(text), 0.0, self.invalid >= self.max_invalid, info)
        indices = [ACTIONS.index(n) for n in names for _ in range(self.frames_per_action)]
        _, frame, self.facts, reward, done = self._ask("step", indices)
        self.frame, self.frames = Image.fromarray(frame), self.frames + len(indices)
        score = self.facts["score"]
        info = {"invalid_action": False, "score": score, "success": score[0] > score[1], "frames": self.frames,
                "actions": names}
        return StepResult(self._observation(f"After {', '.join(names)}:"), reward, done, info)

    def close(self) -> None:
        """Hand the game process to the next FootballEnv of this process (killed at exit)."""
        if self.proc is not None and self.proc.poll() is None:
            self._finalizer.detach()
            _idle.append((self.python, self.proc, self._out, self._in))
        self.proc = None


FOOTBALL_USER_PROMPT = (
    "You play a football game over several turns, seen from the broadcast camera. Your team wears yellow and "
    "attacks the goal on the right; you control the active player. Each turn, think, then give {how_many}"
    "{as_list}, for example <think> the goal is open </think><answer> shot </answer>; after "
    "each answer I show the game again."
)


def football_user_prompt(k: int) -> str:
    """The task rows' user prompt for ``k`` actions per turn."""
    as_list = "" if k == 1 else " as a comma-separated list"
    return FOOTBALL_USER_PROMPT.format(how_many=how_many_actions(k), as_list=as_list)


def write_football_tasks(out_dir, n: int, scenario: str = "academy_empty_goal_close", actions_per_turn: int = 1,
                         jsonl_name: str = "football.jsonl") -> list[dict]:
    """``n`` task rows (LMM-R1 jsonl) for env.name=football: the system prompt and the game's rules as
    text (the first frame is the env's first observation), ``scenario`` in the row (the task), datasource
    ``football``. Episode i is reset with the rollout's seed for that trajectory."""
    import json

    from lmm_r1_ascend.envs.sokoban_generate import SYSTEM_PROMPT

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    message = json.dumps([{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": football_user_prompt(actions_per_turn)}])
    rows = [{"message": message, "answer": "", "datasource": "football", "scenario": scenario,
             "question": f"football_{scenario}_{i:05d}"} for i in range(n)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / jsonl_name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return rows
