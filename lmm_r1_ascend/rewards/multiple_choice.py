"""Multiple-choice answers (VerMulti style): labels such as ``B``, ``(B)``, ``B.``,
``B: 60`` or ``$\\boxed{B}$`` name one option letter A-E.

A label is multiple-choice when, after removing ``$`` delimiters, ``\\boxed{}`` and
``\\text{}`` wrappers, it is an upper-case letter A-E alone, in parentheses or
brackets, or followed by ``.``, ``:`` or ``)`` and optional option text. (A bare letter
followed by text without a delimiter, like "A circle", is not an option.)
The prediction's letter is read from the last ``\\boxed{}`` of the response, else from
the ``<answer>`` part, with the same grammar (case-insensitive there: "(b)" counts).
Judging compares letters only; this runs in-process (no sympy involved).
"""

from __future__ import annotations

import re

_OPTION = re.compile(
    r"""^\s*(?:option\s+|choice\s+)?
        (?:[(\[]\s*(?P<p>[A-E])\s*[)\]](?:\s*[.:：]?\s*.*)?    # (B)  [B]  (B) 60
          |(?P<l>[A-E])\s*(?:[.:：)]\s*.*)?                    # B  B.  B: 60  B) 60
        )\s*$""",
    re.VERBOSE | re.DOTALL | re.IGNORECASE,
)
_WRAPPERS = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _unwrap(text: str) -> str:
    s = text.strip()
    for _ in range(4):  # nested wrappers, e.g. $\boxed{\text{(B)}}$
        prev = s
        s = s.strip().strip("$").strip()
        if s.startswith(r"\(") and s.endswith(r"\)"):
            s = s[2:-2]
        m = _WRAPPERS.fullmatch(s.strip())
        if m:
            s = m.group(1)
        if s == prev:
            break
    return s.strip()


def option_letter(text: str, *, case_sensitive: bool = True) -> str | None:
    """The option letter named by ``text`` (upper-case), or None."""
    if not isinstance(text, str) or len(text) > 2000:
        return None
    m = _OPTION.match(_unwrap(text))
    if not m:
        return None
    letter = m.group("p") or m.group("l")
    if case_sensitive and not letter.isupper():
        return None
    return letter.upper()


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (balanced braces), or None."""
    start = text.rfind("\\boxed")
    while start >= 0:
        i = text.find("{", start)
        if i >= 0 and text[start + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j]
        start = text.rfind("\\boxed", 0, start)
    return None


def predicted_letter(response: str) -> str | None:
    """The option letter a response commits to (see the module docstring)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return option_letter(boxed, case_sensitive=False)
    answers = _ANSWER.findall(response)
    if answers:
        return option_letter(answers[-1], case_sensitive=False)
    return None


def judge_choice(gold_letter: str, response: str) -> tuple[float, str, str | None]:
    """(accuracy, status, predicted letter) for a multiple-choice label."""
    pred = predicted_letter(response)
    if pred is None:
        return 0.0, "no_answer", None
    return (1.0, "correct", pred) if pred == gold_letter else (0.0, "wrong", pred)
