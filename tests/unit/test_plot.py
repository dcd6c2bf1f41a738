"""The run plot: a held-out panel per datasource, one-line notes instead of flat lines, the
true step count, response length per datasource for MGT / multi-datasource runs."""

from __future__ import annotations

import json
import random

import matplotlib.pyplot as plt
import pytest
import yaml

from lmm_r1_ascend.plot import figure, main as plot_main
from lmm_r1_ascend.trainer.metrics import MetricsWriter


def _run(tmp_path, *, steps, sources, stage="fre", kl_coef=0.0, estimator="reinforce_baseline"):
    """A metrics.jsonl as the trainer writes it: an eval row at step 0 (eval_before_train), the
    training steps, the last one also evaluated; random values; returns the rows logged."""
    rng = random.Random()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "stage": stage, "algorithm": {"init_kl_coef": kl_coef, "use_kl_loss": False, "advantage_estimator": estimator},
        "data": {"eval_data": ["x.jsonl"]}}))
    writer, rows = MetricsWriter(tmp_path), []
    ks = [1, 2, 4, 8][:rng.randint(1, 4)]

    def held_out():
        out = {}
        for src in [*sources, "all"]:
            out[f"eval/{src}/accuracy"] = rng.random()
            out.update({f"eval/{src}/pass@{k}": rng.random() for k in ks})
            out[f"eval/{src}/response_length/mean"] = rng.uniform(10, 300)
        return out

    rows.append(writer.write(0, held_out()))
    for step in range(1, steps + 1):
        m = {"reward/mean": rng.random(), "reward/format": 1.0, "reward/accuracy": rng.random(), "kl": 0.0,
             "response_length/mean": rng.uniform(10, 300), "loss/policy": rng.gauss(0, 1), "timing/step": rng.random()}
        m.update({f"response_length/{src}/mean": rng.uniform(10, 300) for src in sources})
        if step == steps:
            m.update(held_out())
        rows.append(writer.write(step, m))
    return rows, ks


def _panels(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _notes(ax):
    return " ".join(t.get_text().replace("\n", " ") for t in ax.texts)


def test_a_multimodal_runs_plot(tmp_path):
    steps, sources = random.randint(3, 12), ["geo", "mathv"]
    rows, ks = _run(tmp_path, steps=steps, sources=sources, stage="mgt")
    fig = figure(tmp_path)
    try:
        # eval_before_train's step-0 row is not a training step
        assert fig._suptitle.get_text() == f"{tmp_path.name}: {steps} training steps; held-out eval at steps 0, {steps}"
        panels = _panels(fig)
        held = panels["held-out eval"]
        want = [f"eval/{src}/{fig_}" for src in [*sources, "all"] for fig_ in ("accuracy", f"pass@{max(ks)}")]
        assert [line.get_label() for line in held.lines] == want
        for line in held.lines:
            assert list(line.get_xdata()) == [0, steps]
            assert list(line.get_ydata()) == [rows[0][line.get_label()], rows[-1][line.get_label()]]
        lengths = panels["response length per datasource"]
        assert [line.get_label() for line in lengths.lines] == (
            [f"response_length/{s}/mean" for s in sources] + [f"eval/{s}/response_length/mean" for s in sources])
        train_geo = lengths.lines[0]
        assert list(train_geo.get_ydata()) == [r["response_length/geo/mean"] for r in rows[1:]]
        # KL without a KL term: a line of text, not a flat line
        kl = panels["KL to reference"]
        assert not kl.lines and "kl = 0 at every step (no KL term: algorithm.init_kl_coef=0)" in _notes(kl)
        reward = panels["reward"]  # a metric constant in this run is said, the others drawn
        assert [line.get_label() for line in reward.lines] == ["reward/mean"]
        assert "reward/format = 1 at every step" in _notes(reward)
        losses = panels["losses"]
        assert "loss/value: not logged (no critic with algorithm.advantage_estimator=reinforce_baseline)" in _notes(losses)
    finally:
        plt.close(fig)


def test_a_one_datasource_text_run_has_no_per_datasource_panel_and_no_repeated_all(tmp_path):
    _run(tmp_path, steps=3, sources=["demo_arithmetic"], kl_coef=0.01, estimator="gae")
    fig = figure(tmp_path)
    try:
        panels = _panels(fig)
        assert "response length per datasource" not in panels
        assert all("/all/" not in line.get_label() for line in panels["held-out eval"].lines)
        # KL constant at 0 with a KL term configured: said, without the configuration's reason
        assert "kl = 0 at every step" in _notes(panels["KL to reference"]) and "no KL term" not in _notes(panels["KL to reference"])
        assert "loss/value: not logged" in _notes(panels["losses"]) and "no critic" not in _notes(panels["losses"])
    finally:
        plt.close(fig)


def test_the_cli_writes_a_png(tmp_path, capsys):
    _run(tmp_path, steps=2, sources=["a"])
    assert plot_main([str(tmp_path)]) == 0
    assert (tmp_path / "metrics.png").stat().st_size > 10_000 and capsys.readouterr().out.strip().endswith("metrics.png")
    assert plot_main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("trained", [1, 7])
def test_the_step_count_is_the_training_steps(tmp_path, trained):
    _run(tmp_path, steps=trained, sources=["a"])
    fig = figure(tmp_path)
    try:
        assert f": {trained} training step{'s' if trained > 1 else ''};" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_a_broken_metrics_row_is_named_by_file_and_line(tmp_path, capsys):
    from lmm_r1_ascend.plot import main
    from lmm_r1_ascend.trainer.metrics import read_metrics

    good = json.dumps({"step": 1, "reward/mean": 0.5})
    (tmp_path / "metrics.jsonl").write_text(f"{good}\nnot json\n{good}\n")
    assert main([str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{tmp_path}/metrics.jsonl:2: not a JSON metrics row" in err, err
    # a live run's last row, still being written (no newline yet), is left out rather than refused
    (tmp_path / "metrics.jsonl").write_text(f"{good}\n{good[:10]}")
    assert read_metrics(tmp_path) == [json.loads(good)]
