"""Everything of ruv-assets that touches disk: PEFT/safetensors formats, the content-addressed
store, the hot-swap slot and its reader. Imports `kernels`, never `ruv_assets`.
"""
