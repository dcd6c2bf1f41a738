"""Prompt data: LMM-R1 jsonl, chat jsonl and HF datasets into templated, image-processed prompts."""
