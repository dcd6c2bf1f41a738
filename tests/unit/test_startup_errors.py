"""Start-up errors in one line (issue 32): the dry run imports custom reward files (a syntax error
or a missing reward_func fails it; the real run fails the same way before any model loads), can
probe HTTP reward endpoints, and a data file with no usable rows ends in one line, never a traceback."""

from __future__ import annotations

import http.server
import threading

import pytest

from lmm_r1_ascend.distributed.net import free_port
from lmm_r1_ascend.rewards.custom import probe_endpoint
from lmm_r1_ascend.train import main as train_main

TINY = ["--recipe", "demo_fre", "model.pretrain=tiny-qwen2", "data.prompt_data=[demo:arithmetic]"]


def _one_error_line(capsys, rc: int, expected_rc: int = 2) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == expected_rc and len(errors) == 1, (rc, err)
    return errors[0]


@pytest.fixture
def bad_rewards(tmp_path):
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def reward_func(queries, prompts, labels)\n    return [0.0] * len(queries)\n")
    nofunc = tmp_path / "nofunc.py"
    nofunc.write_text("def score(queries, prompts, labels):\n    return [0.0] * len(queries)\n")
    return {"syntax": (syntax, "failed to import: SyntaxError"), "nofunc": (nofunc, "must define reward_func")}


@pytest.mark.parametrize("kind", ["syntax", "nofunc"])
@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_a_broken_custom_reward_fails_at_start_up_in_one_line(tmp_path, capsys, bad_rewards, kind, dry):
    path, says = bad_rewards[kind]
    rc = train_main([*TINY, *(["--dry-run"] if dry else []), f"reward.default=custom:{path}",
                     f"output_dir={tmp_path / 'out'}"])
    line = _one_error_line(capsys, rc)
    assert line.startswith("error: reward.default: custom reward file ") and str(path) in line and says in line, line


def test_a_broken_routed_reward_names_its_route(tmp_path, capsys, bad_rewards):
    path, _ = bad_rewards["nofunc"]
    rc = train_main([*TINY, "--dry-run", f"reward.routes={{geo*: custom:{path}}}", f"output_dir={tmp_path}"])
    assert "error: reward.routes['geo*']: custom reward file" in _one_error_line(capsys, rc)


def test_a_good_custom_reward_passes_the_dry_run(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text("def reward_func(queries, prompts, labels):\n    return [1.0] * len(queries)\n")
    rc = train_main([*TINY, "--dry-run", f"reward.default=custom:{good}", f"output_dir={tmp_path / 'out'}"])
    out, err = capsys.readouterr()
    assert rc == 0 and "dry run ok: config, device, model, 1 custom reward(s) and all" in out, err


def test_probe_rewards_fails_on_an_endpoint_that_does_not_answer(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/reward"  # nothing listens there
    rc = train_main([*TINY, "--dry-run", "--probe-rewards", f"reward.default={url}", f"output_dir={tmp_path}"])
    line = _one_error_line(capsys, rc)
    assert line.startswith(f"error: reward.default: reward endpoint {url} does not answer"), line


def test_probe_endpoint_accepts_any_http_reply():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # refuses the empty batch: still an answer
            self.send_response(422)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert probe_endpoint(f"http://127.0.0.1:{server.server_port}/r", timeout_s=5) == 422
    finally:
        server.shutdown()


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "run"])
def test_data_with_no_usable_rows_ends_in_one_line(tmp_path, capsys, dry):
    """LMM-R1's examples/data/test_message.jsonl shape: image paths that do not exist, rows skipped."""
    rows = tmp_path / "test_message.jsonl"
    msg = '[{\\"role\\": \\"user\\", \\"content\\": [{\\"type\\": \\"image\\", \\"image\\": \\"/no/such/a.png\\"}, ' \
          '{\\"type\\": \\"text\\", \\"text\\": \\"What is shown?\\"}]}]'
    rows.write_text("".join(f'{{"message": "{msg}", "answer": "{i}"}}\n' for i in range(3)))
    rc = train_main(["--stage", "mgt", "--recipe", "demo_mgt", *(["--dry-run"] if dry else []),
                     "model.init_from=pretrain",  # demo_mgt continues outputs/demo_fre_vl, which this test has not run
                     f"data.prompt_data=[{rows}]", "data.on_bad_line=skip", f"output_dir={tmp_path / 'out'}"])
    line = _one_error_line(capsys, rc)
    assert str(rows) in line and "no prompts left" in line and "3 rows read, 3 bad" in line, line



def test_the_dry_run_names_a_missing_tracker_library(tmp_path, capsys, monkeypatch):
    """A tracker the run would open is checked by the dry run too: its library missing is one line
    naming the extra, not a pass followed by a failing run."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "wandb" else real_find_spec(name, *a, **k))
    rc = train_main([*TINY, "--dry-run", "trainer.loggers=[tensorboard,wandb]", f"output_dir={tmp_path / 'out'}"])
    line = _one_error_line(capsys, rc)
    assert "trainer.loggers: wandb is not installed" in line and "lmm-r1-ascend[wandb]" in line, line
