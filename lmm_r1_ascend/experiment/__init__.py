"""`python -m lmm_r1_ascend.experiment two-stage --out DIR`: the paper's two-stage ablation in one command.

variants.py names the variants (stage, recipe, overrides, which variant the run starts from);
runner.py runs each as a `python -m lmm_r1_ascend.train` subprocess and evaluates it with
`python -m lmm_r1_ascend.eval`, skipping variants already finished and resuming a stopped one;
table.py builds the paper-style table (markdown and PNG) from the eval summaries through
evaluation/compare.py; paper.py writes the paper-scale plan with the memory planner's verdicts.
docs/two_stage.md "The ablation in one command" documents it.
"""
