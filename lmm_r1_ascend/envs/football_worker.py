"""The Google Research Football game in a process of its own (run by envs/football.py).

    <football python> football_worker.py READ_FD WRITE_FD

A standalone script, run by the Python that has ``gfootball`` installed (often another
virtual environment than the trainer's); it imports nothing from this project. gfootball
renders at most one game per process, and its C++ engine can print to stdout, so the
parent talks to it over two inherited pipe file descriptors (multiprocessing Connections:
pickled tuples), one request, one reply:

    ("reset", scenario, seed, rewards, render_width, max_side) -> ("ok", frame, facts)
    ("step", [action index, ...])                             -> ("ok", frame, facts, reward, done)
    ("close",)                                                -> ("ok",) and the process exits
    any failure                                               -> ("error", "<one line>")

frame: uint8 (H, W, 3) RGB, downscaled so its longer side is at most max_side. facts:
score [left, right], steps_left, ball_owned_team, game_mode (from the raw observation).
The action indices are into gfootball's "v2" action set (its 19 default actions plus
builtin_ai: the 20 actions MageBench's Football harness uses).
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection


def _frame(obs: dict, max_side: int):
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(obs["frame"]))
    img.thumbnail((max_side, max_side))
    return np.asarray(img, dtype=np.uint8)


def _facts(obs: dict) -> dict:
    return {"score": [int(v) for v in obs["score"]], "steps_left": int(obs["steps_left"]),
            "ball_owned_team": int(obs["ball_owned_team"]), "game_mode": int(obs["game_mode"])}


def serve(inbox: Connection, outbox: Connection) -> None:
    import gfootball.env as football

    env, made_for, max_side = None, None, 0
    while True:
        msg = inbox.recv()
        try:
            if msg[0] == "reset":
                _, scenario, seed, rewards, render_width, max_side = msg
                if made_for != (scenario, rewards, render_width):
                    if env is not None:
                        env.close()
                    env = football.create_environment(
                        env_name=scenario, representation="raw", rewards=rewards, render=True,
                        other_config_options={"action_set": "v2", "render_resolution_x": render_width,
                                              "render_resolution_y": int(0.5625 * render_width),
                                              "game_engine_random_seed": seed})
                    made_for = (scenario, rewards, render_width)
                env.unwrapped._config["game_engine_random_seed"] = seed  # read by every reset's scenario
                obs = env.reset()[0]
                outbox.send(("ok", _frame(obs, max_side), _facts(obs)))
            elif msg[0] == "step":
                total, done, obs = 0.0, False, None
                for index in msg[1]:
                    observations, reward, done, _ = env.step([int(index)])
                    obs = observations[0]
                    total += float(reward[0] if hasattr(reward, "__len__") else reward)
                    if done:
                        break
                outbox.send(("ok", _frame(obs, max_side), _facts(obs), total, bool(done)))
            elif msg[0] == "close":
                if env is not None:
                    env.close()
                outbox.send(("ok",))
                return
            else:
                outbox.send(("error", f"unknown request {msg[0]!r}"))
        except Exception as e:  # noqa: BLE001 - the parent turns this into the env's error
            outbox.send(("error", " ".join(f"{type(e).__name__}: {e}".split())))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
