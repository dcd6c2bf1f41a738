"""What a run shows while it trains: its messages, and either a progress bar whose postfix
carries the step's figures and the latest held-out accuracy, or (without a bar: a file, CI)
one line per step. Messages are printed above the bar, which is redrawn, not through it."""

from __future__ import annotations

from typing import Callable


class Progress:
    def __init__(self, sink: Callable[[str], None]):
        self._sink = sink
        self._bar = None  # a tqdm bar while fit runs with progress=True
        self._step_lines = False
        self._held_out: str | None = None  # the latest held-out accuracy, kept on the bar

    def log(self, text: str) -> None:
        """A message of the run: printed above the progress bar (which is redrawn), not through it."""
        if self._bar is None:
            self._sink(text)
        else:
            with self._bar.external_write_mode():
                self._sink(text)

    def open(self, *, total: int, initial: int, desc: str, bar: bool, step_lines: bool) -> None:
        """Start showing progress: a bar (bar=True), else one line per step when step_lines."""
        self._step_lines = step_lines and not bar
        if bar:
            from tqdm.auto import tqdm

            # tqdm's own rate would repeat the step time the postfix gives; without it the figures fit 100 columns
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=desc,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                        "[{elapsed}<{remaining}{postfix}]")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def eval_started(self, prompts: int, samples: int) -> None:
        """The held-out evaluation is running (64 x 8 samples take a while): said on the bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"held-out eval ({prompts} prompts x {samples})...", refresh=True)

    def eval_finished(self, step: int, metrics: dict[str, float]) -> None:
        bar = self._bar
        if bar is None:
            return
        if step == 0 and bar.n == 0:
            bar.reset()  # the clock starts with training: the eval before it would skew the rate and ETA
        if "eval/all/accuracy" in metrics:
            self._held_out = f"{metrics['eval/all/accuracy']:.3f}"
            bar.set_postfix_str(f"held-out {self._held_out}", refresh=True)

    def step_done(self, step: int, total: int, summary: str) -> None:
        """A training step ended; summary: its figures (PPOTrainer._step_summary)."""
        if self._bar is not None:
            self._bar.update(1)
            if self._held_out:  # the latest held-out accuracy stays shown
                summary += f" held-out {self._held_out}"
            self._bar.set_postfix_str(summary, refresh=True)
        elif self._step_lines:
            self.log(f"step {step}/{total}: {summary}")
