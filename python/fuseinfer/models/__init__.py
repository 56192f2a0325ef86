"""Model architectures built from fuseinfer ops: Llama (Llama-3 family) and Qwen3 dense."""
