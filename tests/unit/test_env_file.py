"""load_env_file (envs/registry.py): a user's environment from a Python file; each way a
file can be wrong is one line naming the file. Also runs the example in docs/agents.md
(extracted from the page, so the documented example cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmm_r1_ascend.envs.base import Observation
from lmm_r1_ascend.envs.registry import env_names, load_env_file, make_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"

GOOD = '''
from dataclasses import dataclass
from lmm_r1_ascend.envs.base import Environment, Observation, StepResult
from lmm_r1_ascend.envs.registry import register_env

@dataclass
class Counter_:
    n: int = 0

@register_env("{name}")
class Echo(Environment):
    def __init__(self, limit=2):
        self.limit, self.count = limit, Counter_()
    def reset(self, seed, task):
        self.count.n = 0
        return Observation(text=f"hello {{task['who']}}")
    def step(self, action_text):
        self.count.n += 1
        return StepResult(Observation(text=action_text), 1.0, self.count.n >= self.limit)
'''


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_file_registers_its_environments(tmp_path):
    p = write(tmp_path, "echo_env.py", GOOD.format(name="echo-file-test"))
    assert load_env_file(p) == ["echo-file-test"]
    assert load_env_file(p) == ["echo-file-test"]  # loading again is a no-op
    assert "echo-file-test" in env_names() and "sokoban" in env_names()
    env = make_env("echo-file-test", limit=1)
    assert env.reset(0, {"who": "you"}) == Observation(text="hello you")
    r = env.step("up")
    assert (r.observation.text, r.reward, r.done) == ("up", 1.0, True)


@pytest.mark.parametrize("name, text, fragment", [
    ("missing.py", None, "not found or not a .py file"),
    ("env.txt", "x = 1", "not found or not a .py file"),
    ("syntax.py", "def f(:\n    pass\n", "failed to import (line 1): SyntaxError: "),
    ("raises.py", "raise RuntimeError('no gpu\\nhere')", "failed to import: RuntimeError: no gpu here"),
    ("nothing.py", "X = 1\n", "registered no environment: decorate an Environment subclass"),
    ("taken.py", GOOD.format(name="sokoban"), "ValueError: environment name 'sokoban' is already registered"),
])
def test_bad_files_are_one_clear_line(tmp_path, name, text, fragment):
    p = tmp_path / name if text is None else write(tmp_path, name, text)
    with pytest.raises(ValueError) as err:
        load_env_file(p)
    msg = str(err.value)
    assert fragment in msg and str(p.resolve()) in msg and "\n" not in msg


def test_a_failed_import_leaves_no_names(tmp_path):
    text = GOOD.format(name="half-registered") + "\nraise RuntimeError('late failure')\n"
    with pytest.raises(ValueError, match="late failure"):
        load_env_file(write(tmp_path, "half.py", text))
    assert "half-registered" not in env_names()


def test_the_documented_example_runs(tmp_path):
    """The first ```python block of docs/agents.md is a whole environment file."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block, "docs/agents.md has no ```python example"
    names = load_env_file(write(tmp_path, "doc_example.py", block.group(1)))
    assert names == ["guess-number"]
    env = make_env("guess-number", high=8)
    obs = env.reset(3, {"secret": 5})
    assert "1 and 8" in obs.text and len(obs.images) == 1
    lo, hi, result = 1, 8, None
    for _ in range(4):  # binary search finds any number in 1..8 within 4 guesses
        guess = (lo + hi) // 2
        result = env.step(f"<answer> {guess} </answer>")
        if result.done:
            break
        lo, hi = (guess + 1, hi) if "higher" in result.observation.text else (lo, guess - 1)
    assert result.done and result.reward == 1.0 and result.info["solved"] is True
    env.reset(0, {"secret": 2})
    bad = env.step("no answer here")
    assert bad.info["invalid_action"] is True and bad.reward == 0.0 and not bad.done


def test_the_config_key_loads_the_file_and_checks_the_name(tmp_path, monkeypatch):
    """env.file: the loader imports the file before it looks env.name up, makes the path absolute
    (engine actors may start in another directory), and each mistake is one line."""
    from lmm_r1_ascend.config import ConfigError, load_config

    write(tmp_path, "my_envs.py", GOOD.format(name="echo-config-test"))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides=["env.name=echo-config-test", "env.file=my_envs.py"])
    assert cfg.env.file == str((tmp_path / "my_envs.py").resolve())
    for overrides, fragment in [
        (["env.name=echo-config-test", "env.file=missing.py"], "env.file: custom environment file not found"),
        (["env.name=sokoban", "env.file=my_envs.py"],
         f"env.name: 'sokoban' is not registered by env.file {(tmp_path / 'my_envs.py').resolve()}; "
         "it registers: echo-config-test"),
        (["env.file=my_envs.py"], "env.file=my_envs.py is set but env.name is empty"),
        (["env.name=nope"], "unknown environment 'nope'; registered: .* \\(your own environment: env.file=PATH.py\\)"),
    ]:
        with pytest.raises(ConfigError, match=fragment) as err:
            load_config(overrides=overrides)
        assert "\n" not in str(err.value)
