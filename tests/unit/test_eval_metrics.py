"""Evaluation metrics: pass@k and maj@k against slow references that enumerate every
k-subset, ks_for, answer classes, length stats against numpy, a hand-computed summary,
and the error paths."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from lmm_r1_ascend.evaluation import metrics
from lmm_r1_ascend.evaluation.metrics import answer_classes, ks_for, length_stats, maj_at_k, pass_at_k, summarise


def slow_pass_at_k(correct: list[bool], k: int) -> Fraction:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return Fraction(sum(any(correct[i] for i in s) for s in subsets), len(subsets))


def slow_maj_at_k(classes, correct, k, voting=None) -> Fraction:
    """Enumerate k-subsets and count votes by hand; tied classes share the subset's point."""
    n = len(classes)
    votes_ok = [classes[i] is not None and (voting is None or voting[i]) for i in range(n)]
    flags: dict[int, list[bool]] = {}
    for i in range(n):
        if votes_ok[i]:
            flags.setdefault(classes[i], []).append(correct[i])
    right = {}
    for c, fs in flags.items():  # majority of the class's flags, an exact tie -> its first sample
        yes, no = fs.count(True), fs.count(False)
        right[c] = fs[0] if yes == no else yes > no
    total, count = Fraction(0), 0
    for sub in itertools.combinations(range(n), k):
        count += 1
        votes = Counter(classes[i] for i in sub if votes_ok[i])
        if not votes:
            continue
        top = max(votes.values())
        tied = [c for c, v in votes.items() if v == top]
        total += Fraction(sum(right[c] for c in tied), len(tied))
    return total / count


# ---------------------------------------------------------------- pass@k

@pytest.mark.parametrize("seed", range(1101, 1131))
def test_pass_at_k_matches_subset_enumeration(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 12)
    p = rng.choice([0.0, 1.0, rng.random()])  # all wrong, all right, or mixed
    correct = [rng.random() < p for _ in range(n)]
    for k in range(1, n + 1):  # includes k = n
        want = slow_pass_at_k(correct, k)
        assert pass_at_k(n, sum(correct), k) == pytest.approx(float(want), abs=1e-12), (seed, correct, k)


def test_pass_at_k_edges():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c < k: every 3-subset holds a correct sample
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(1024, 1, 1) == pytest.approx(1 / 1024)  # large n: no overflowing binomials


@pytest.mark.parametrize("args, needle", [((4, 1, 5), "k=5"), ((4, 1, 0), "k=0"), ((4, -1, 2), "c=-1"),
                                          ((4, 5, 2), "c=5"), ((0, 0, 1), "n=0")])
def test_pass_at_k_rejects_bad_arguments(args, needle):
    with pytest.raises(ValueError, match=needle):
        pass_at_k(*args)


# ---------------------------------------------------------------- ks_for

def test_ks_for():
    assert ks_for(1) == [1]
    assert ks_for(2) == [1, 2]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(12) == [1, 2, 4, 8, 12]
    assert ks_for(64) == [1, 2, 4, 8, 16, 32, 64]
    for n in range(1, 100):
        assert ks_for(n) == sorted({2 ** i for i in range(8) if 2 ** i <= n} | {n})
    with pytest.raises(ValueError, match="n=0"):
        ks_for(0)


# ---------------------------------------------------------------- answer classes

def test_answer_classes_default_equality_and_none():
    assert answer_classes(["4", " 4", "5", None, "", "  ", "4", "5"]) == [0, 0, 1, None, None, None, 0, 1]
    assert answer_classes([]) == []
    assert answer_classes([None, None]) == [None, None]


def test_answer_classes_injected_equivalence_compares_with_the_first_member():
    calls = []

    def near(a, b):  # not transitive: 1 ~ 2 ~ 3 but 1 !~ 3
        calls.append((a, b))
        return abs(int(a) - int(b)) <= 1

    assert answer_classes(["1", "2", "3", "4"], near) == [0, 0, 1, 1]
    assert calls[0] == ("1", "2")  # same(representative, answer)
    assert answer_classes(["0.5", "1/2", "2"], lambda a, b: float(Fraction(a)) == float(Fraction(b))) == [0, 0, 1]


# ---------------------------------------------------------------- maj@k

def random_case(rng: random.Random):
    n = rng.randint(1, 10)
    m = rng.randint(1, 4)
    p_none = rng.choice([0.0, 0.3])
    classes = [None if rng.random() < p_none else rng.randrange(m) for _ in range(n)]
    class_right = {c: rng.random() < 0.5 for c in range(m)}
    if rng.random() < 0.25:  # inconsistent flags within a class: the majority/first rule decides
        correct = [rng.random() < 0.5 for _ in range(n)]
    else:
        correct = [c is not None and class_right[c] for c in classes]
    voting = [rng.random() < 0.8 for _ in range(n)] if rng.random() < 0.3 else None
    return classes, correct, voting


@pytest.mark.parametrize("seed", range(2201, 2261))
def test_maj_at_k_matches_subset_enumeration(seed):
    rng = random.Random(seed)
    classes, correct, voting = random_case(rng)
    for k in range(1, len(classes) + 1):
        want = slow_maj_at_k(classes, correct, k, voting)
        got = maj_at_k(classes, correct, k, voting)
        assert got == pytest.approx(float(want), abs=1e-12), (seed, classes, correct, voting, k)


@pytest.mark.parametrize("seed", range(3301, 3311))
def test_maj_at_k_exact_integer_path_matches_too(seed, monkeypatch):
    monkeypatch.setattr(metrics, "_FLOAT_LIMIT", 0)  # force the exact (object-dtype) counting
    rng = random.Random(seed)
    classes, correct, voting = random_case(rng)
    for k in range(1, len(classes) + 1):
        assert maj_at_k(classes, correct, k, voting) == pytest.approx(
            float(slow_maj_at_k(classes, correct, k, voting)), abs=1e-12)


def test_maj_at_k_special_cases():
    # a single class: the vote is always that class
    assert maj_at_k([0] * 6, [True] * 6, 3) == 1.0
    assert maj_at_k([0] * 6, [False] * 6, 3) == 0.0
    # all answers missing: no subset has a voter
    assert maj_at_k([None] * 5, [False] * 5, 2) == 0.0
    assert maj_at_k([None] * 5, [True] * 5, 5) == 0.0
    # n = k: the full majority vote, deterministic
    assert maj_at_k([0, 0, 1], [True, True, False], 3) == 1.0
    assert maj_at_k([0, 1, 1], [True, False, False], 3) == 0.0
    # ties split evenly: two classes of two, one right
    assert maj_at_k([0, 0, 1, 1], [True, True, False, False], 4) == pytest.approx(0.5)
    # three-way tie at one vote each, two right
    assert maj_at_k([0, 1, 2], [True, True, False], 3) == pytest.approx(2 / 3)
    # non-voters still take subset slots: [None, 0]; k=1 -> half the subsets have no voter
    assert maj_at_k([None, 0], [False, True], 1) == pytest.approx(0.5)
    # the voting mask silences a sample like a None class
    assert maj_at_k([0, 1, 1], [True, False, False], 3, voting=[True, False, True]) == pytest.approx(0.5)
    # maj@1 is the voters' mean class correctness
    assert maj_at_k([0, 1, 1, 2, None], [True, False, False, True, True], 1) == pytest.approx(2 / 5)


def test_maj_at_k_large_n_runs_and_agrees_with_exact_counting():
    rng = random.Random(4401)
    classes = [rng.randrange(10) for _ in range(64)]
    right = {c: rng.random() < 0.4 for c in range(10)}
    correct = [right[c] for c in classes]
    got = maj_at_k(classes, correct, 32)
    sizes, flags = metrics._class_table(classes, correct, None)
    exact = metrics._majority_weight(sizes, flags, 0, 32, exact=True) / math.comb(64, 32)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(float(exact), rel=1e-12)


def test_maj_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k=4 with n=3"):
        maj_at_k([0, 1, 2], [True] * 3, 4)
    with pytest.raises(ValueError, match="k=0"):
        maj_at_k([0, 1, 2], [True] * 3, 0)
    with pytest.raises(ValueError, match="equal lengths"):
        maj_at_k([0, 1, 2], [True] * 2, 1)
    with pytest.raises(ValueError, match="voting"):
        maj_at_k([0, 1, 2], [True] * 3, 1, voting=[True])


# ---------------------------------------------------------------- length stats

@pytest.mark.parametrize("seed", range(5501, 5506))
def test_length_stats_match_numpy(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 200, size=int(rng.integers(1, 40))).tolist()
    got = length_stats(lengths, max_new_tokens=150)
    assert got["mean"] == pytest.approx(np.mean(lengths))
    assert got["median"] == pytest.approx(np.median(lengths))
    assert got["p90"] == pytest.approx(np.percentile(lengths, 90, method="linear"))
    assert got["cut_frac"] == pytest.approx(np.mean(np.array(lengths) >= 150))
    reasons = ["length" if x % 3 == 0 else "stop" for x in lengths]
    assert length_stats(lengths, 150, reasons)["cut_frac"] == pytest.approx(np.mean([x % 3 == 0 for x in lengths]))


def test_length_stats_errors_and_hand_values():
    assert length_stats([10, 20, 30, 40], 40) == {"mean": 25.0, "median": 25.0, "p90": 37.0, "cut_frac": 0.25}
    with pytest.raises(ValueError, match="no lengths"):
        length_stats([], 10)
    with pytest.raises(ValueError, match="2 lengths but 1 finish_reasons"):
        length_stats([1, 2], 10, ["stop"])


# ---------------------------------------------------------------- summarise

def rec(pid, source, correct, cls, fmt, length, finish, status):
    return {"prompt_id": pid, "datasource": source, "correct": correct, "answer_class": cls, "format": fmt,
            "response_length": length, "finish_reason": finish, "status": status}


RECORDS = [
    rec(0, "math", True, 0, 1.0, 10, "stop", "correct"),
    rec(0, "math", False, 1, 1.0, 20, "length", "wrong"),
    rec(1, "math", False, None, 0.0, 30, "stop", "no_answer"),
    rec(1, "math", False, 0, 1.0, 40, "stop", "wrong"),
    rec(0, "sokoban", True, 0, 1.0, 5, "stop", "solved"),  # prompt_id 0 again: a different prompt
    rec(0, "sokoban", True, 0, 0.5, 15, "stop", "solved"),
]


def test_summarise_hand_computed():
    got = summarise(RECORDS, n=2, max_new_tokens=40)
    assert list(got) == ["math", "sokoban", "all"]
    math_want = {"accuracy": 0.25, "pass@1": 0.25, "pass@2": 0.5,
                 "maj@1": 0.25,  # prompt 0: one vote each, 1/2; prompt 1: no vote or a wrong one
                 "maj@2": 0.25,  # prompt 0: a 1-1 tie of right and wrong, 1/2; prompt 1: 0
                 "format_rate": 0.75, "response_length/mean": 25.0, "response_length/median": 25.0,
                 "response_length/p90": 37.0, "cut_frac": 0.25, "n_prompts": 2, "n_samples": 4,
                 "status/correct": 1, "status/no_answer": 1, "status/wrong": 2}
    soko_want = {"accuracy": 1.0, "pass@1": 1.0, "pass@2": 1.0, "maj@1": 1.0, "maj@2": 1.0, "format_rate": 0.75,
                 "response_length/mean": 10.0, "response_length/median": 10.0, "response_length/p90": 14.0,
                 "cut_frac": 0.0, "n_prompts": 1, "n_samples": 2, "status/solved": 2}
    all_want = {"accuracy": 0.5, "pass@1": 0.5, "pass@2": 2 / 3, "maj@1": 0.5, "maj@2": 0.5, "format_rate": 0.75,
                "response_length/mean": 20.0, "response_length/median": 17.5, "response_length/p90": 35.0,
                "cut_frac": 1 / 6, "n_prompts": 3, "n_samples": 6,
                "status/correct": 1, "status/no_answer": 1, "status/solved": 2, "status/wrong": 2}
    for source, want in (("math", math_want), ("sokoban", soko_want), ("all", all_want)):
        assert set(got[source]) == set(want), source
        for key, value in want.items():
            assert got[source][key] == pytest.approx(value), (source, key)


def test_summarise_key_order():
    keys = list(summarise(RECORDS, n=2, max_new_tokens=40)["all"])
    assert keys == ["accuracy", "pass@1", "pass@2", "maj@1", "maj@2", "format_rate", "response_length/mean",
                    "response_length/median", "response_length/p90", "cut_frac", "n_prompts", "n_samples",
                    "status/correct", "status/no_answer", "status/solved", "status/wrong"]


def test_summarise_errors():
    with pytest.raises(ValueError, match=r"prompt 1 of datasource 'math' has 1 samples, expected n=2"):
        summarise(RECORDS[:3], n=2, max_new_tokens=40)
    with pytest.raises(ValueError, match="no records"):
        summarise([], n=2, max_new_tokens=40)
    broken = [dict(r) for r in RECORDS]
    del broken[2]["status"]
    with pytest.raises(ValueError, match=r"record 2 lacks key\(s\) \['status'\]"):
        summarise(broken, n=2, max_new_tokens=40)
    renamed = [dict(r, datasource="all") for r in RECORDS[:2]]
    with pytest.raises(ValueError, match="reserved"):
        summarise(renamed, n=2, max_new_tokens=40)
    with pytest.raises(ValueError, match="n=0"):
        summarise(RECORDS, n=0, max_new_tokens=40)


def test_summarise_reports_the_mean_reward_when_records_carry_it():
    rewards = [1.5, 0.5, 0.0, 0.5, 3.2, 2.0]  # e.g. math's format + accuracy, Sokoban's shaped reward
    got = summarise([dict(r, reward=x) for r, x in zip(RECORDS, rewards)], n=2, max_new_tokens=40)
    assert got["sokoban"]["reward_mean"] == pytest.approx(2.6)
    assert got["math"]["reward_mean"] == pytest.approx(0.625)
    assert got["all"]["reward_mean"] == pytest.approx(sum(rewards) / 6)
    assert "reward_mean" not in summarise(RECORDS, n=2, max_new_tokens=40)["all"]
