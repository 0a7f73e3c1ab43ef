"""Serving: the inference servers that follow the slots (vLLM with the `ruv_vllm` plugin), how
the project starts and stops them, and how a promotion asks them before and waits for them after."""
