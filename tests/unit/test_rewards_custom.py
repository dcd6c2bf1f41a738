"""Custom rewards: Python files with reward_func, and HTTP endpoints (a local
http.server on 127.0.0.1): results, retries with backoff, timeouts, errors naming the
file / URL and the sample, and the opt-in "score 0 and count" policy."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmm_r1_ascend.rewards.custom import HttpReward, PythonFileReward, load_reward_file
from lmm_r1_ascend.rewards.types import RewardError, RewardInput

REWARD_FILE = '''
import numpy as np

def reward_func(queries, prompts, labels):
    out = []
    for q, p, lab in zip(queries, prompts, labels):
        if "boom" in q:
            raise KeyError("exploded on " + q)
        out.append(len(q) + (0.5 if lab == "bonus" else 0.0))
    return np.array(out, dtype=np.float32)  # arrays are accepted
'''


def samples(*queries, labels=None):
    labels = labels or [""] * len(queries)
    return [RewardInput(response=q, query=q, prompt="P:", label=lab) for q, lab in zip(queries, labels)]


@pytest.fixture
def reward_file(tmp_path):
    p = tmp_path / "my_reward.py"
    p.write_text(REWARD_FILE)
    return p


def test_python_file_scores_in_order(reward_file):
    fn = PythonFileReward(reward_file)
    outs = fn(samples("ab", "abcd", "x", labels=["", "bonus", ""]))
    assert [o.total for o in outs] == [2.0, 4.5, 1.0] and fn.counts["ok"] == 3
    # without a query, the query is prompt + response
    assert fn([RewardInput(response="xyz", prompt="P:")])[0].total == 5.0


def test_python_file_exception_names_file_and_sample(reward_file):
    fn = PythonFileReward(reward_file)
    with pytest.raises(RewardError) as e:
        fn(samples("ok", "boom here", "fine"))
    msg = str(e.value)
    assert str(reward_file) in msg and "sample 1" in msg and "boom here" in msg and "KeyError" in msg


def test_python_file_zero_policy_counts(reward_file):
    fn = PythonFileReward(reward_file, on_error="zero")
    outs = fn(samples("ok", "boom", "fine", "boom!"))
    assert [o.total for o in outs] == [2.0, 0.0, 4.0, 0.0]
    assert [o.status for o in outs] == ["ok", "error", "ok", "error"]
    assert fn.counts == {"ok": 2, "error": 2} and "sample 3" in outs[3].detail


@pytest.mark.parametrize("body,msg", [
    ("def reward_func(q, p, l):\n    return [1.0]\n", "returned 1 rewards for 2 samples"),
    ("def reward_func(q, p, l):\n    return [1.0, float('nan')]\n", "non-finite reward nan for sample 1"),
    ("def reward_func(q, p, l):\n    return ['a', 'b']\n", "returned a str for sample 0"),
    ("def reward_func(q, p, l):\n    return 3.0\n", "must return a list"),
    ("def reward_func(q, p, l):\n    return {'scores': [1, 2]}\n", "without a 'rewards' entry"),
])
def test_bad_return_values_are_errors_naming_the_file(tmp_path, body, msg):
    p = tmp_path / "r.py"
    p.write_text(body)
    with pytest.raises(RewardError) as e:
        PythonFileReward(p)(samples("a", "b"))
    assert msg in str(e.value) and str(p) in str(e.value)


def test_dict_and_list_returns_are_accepted(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("def reward_func(q, p, l):\n    return {'rewards': [1, 2.5], 'extra_logs': {}}\n")
    assert [o.total for o in PythonFileReward(p)(samples("a", "b"))] == [1.0, 2.5]


@pytest.mark.parametrize("body,msg", [
    ("x = 1\n", "must define reward_func"),
    ("def reward_func(:\n", "failed to import: SyntaxError"),
])
def test_broken_files(tmp_path, body, msg):
    p = tmp_path / "r.py"
    p.write_text(body)
    with pytest.raises(ValueError, match=msg):
        load_reward_file(p)
    with pytest.raises(ValueError, match="not found"):
        load_reward_file(tmp_path / "absent.py")
    with pytest.raises(ValueError, match="on_error"):
        PythonFileReward(tmp_path / "absent.py", on_error="ignore")


# --- HTTP --------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append((self.path, body))
        if self.path == "/hang":
            srv.release.wait(10)  # held until teardown; the client times out first
            return
        if self.path == "/flaky" and sum(p == "/flaky" for p, _ in srv.requests) <= 2:
            return self._reply(503, b"busy")
        if self.path == "/bad":
            return self._reply(400, b"labels missing")
        if self.path == "/garbage":
            return self._reply(200, b"<html>not json")
        rewards = [float(len(q)) for q in body["query"]]
        if self.path == "/short":
            rewards = rewards[:-1]
        self._reply(200, json.dumps({"rewards": rewards}).encode())

    def _reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.requests, srv.release = [], threading.Event()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def client(url, **kw):
    sleeps = []
    kw.setdefault("sleep", sleeps.append)  # record the backoff instead of sleeping
    return HttpReward(url, **kw), sleeps


def test_http_ok_and_payload(server):
    srv, base = server
    fn, _ = client(base + "/ok")
    outs = fn(samples("ab", "abc", labels=["x", "y"]))
    assert [o.total for o in outs] == [2.0, 3.0]
    path, body = srv.requests[-1]
    assert path == "/ok" and body == {"query": ["ab", "abc"], "prompts": ["P:", "P:"], "labels": ["x", "y"]}


def test_http_retries_with_backoff(server):
    srv, base = server
    fn, sleeps = client(base + "/flaky", retries=3, backoff_s=0.5)
    assert [o.total for o in fn(samples("abcd"))] == [4.0]
    assert sum(p == "/flaky" for p, _ in srv.requests) == 3  # 503, 503, then 200
    assert len(sleeps) == 2 and 0.45 <= sleeps[0] <= 0.55 and 0.9 <= sleeps[1] <= 1.1  # doubling, +-10% jitter


def test_http_client_error_is_not_retried_and_names_the_url(server):
    srv, base = server
    fn, sleeps = client(base + "/bad", retries=3)
    with pytest.raises(RewardError) as e:
        fn(samples("a"))
    assert base + "/bad" in str(e.value) and "HTTP 400" in str(e.value) and "labels missing" in str(e.value)
    assert sleeps == [] and sum(p == "/bad" for p, _ in srv.requests) == 1


def test_http_timeout(server):
    _, base = server
    fn, sleeps = client(base + "/hang", retries=1, timeout_s=0.3)
    with pytest.raises(RewardError) as e:
        fn(samples("a"))
    assert base + "/hang" in str(e.value) and "2 attempt" in str(e.value) and "timed out" in str(e.value)
    assert len(sleeps) == 1


@pytest.mark.parametrize("path,msg", [("/garbage", "invalid JSON"), ("/short", "returned 0 rewards for 1 samples")])
def test_http_malformed_replies(server, path, msg):
    _, base = server
    fn, _ = client(base + path)
    with pytest.raises(RewardError, match=msg) as e:
        fn(samples("a"))
    assert base + path in str(e.value)


def test_http_connection_refused_and_zero_policy():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    url = f"http://127.0.0.1:{port}/reward"
    fn, sleeps = client(url, retries=2)
    with pytest.raises(RewardError) as e:
        fn(samples("a"))
    assert url in str(e.value) and "3 attempt" in str(e.value) and len(sleeps) == 2
    fn0, _ = client(url, retries=0, on_error="zero")
    outs = fn0(samples("a", "b"))
    assert [o.total for o in outs] == [0.0, 0.0] and {o.status for o in outs} == {"error"}
    assert fn0.counts["error"] == 2 and url in outs[0].detail


def test_http_bad_arguments():
    with pytest.raises(ValueError, match="http"):
        HttpReward("ftp://x")
    with pytest.raises(ValueError, match="retries"):
        HttpReward("http://x", retries=-1)
    fn, _ = client("http://127.0.0.1:9/none")
    with pytest.raises(RewardError, match="JSON-serialisable"):
        fn([RewardInput(response="a", label=object())])


def test_zero_policy_for_one_bad_value(tmp_path):
    p = tmp_path / "r.py"
    p.write_text("def reward_func(q, p, l):\n    return [1.0, float('inf'), 3]\n")
    fn = PythonFileReward(p, on_error="zero")
    outs = fn(samples("a", "b", "c"))
    assert [o.total for o in outs] == [1.0, 0.0, 3.0] and outs[1].status == "error"
    assert "sample 1" in outs[1].detail and str(p) in outs[1].detail and fn.counts == {"ok": 2, "error": 1}
