"""ruv-vllm: a vLLM endpoint plugin that serves the hot-swap slots of a ruv-assets store.

It lives in vLLM's environment, not the project's (vLLM pins its own torch, numba and
transformers), so it imports nothing from the project: the slot layout it reads is the one
`ruv_resources.slot_format` documents (`<slot>/active -> versions/<generation>-<hash12>`).
"""
