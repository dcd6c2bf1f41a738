"""Model loading: policy, reference and critic from a HF path or the built-in tiny models."""
