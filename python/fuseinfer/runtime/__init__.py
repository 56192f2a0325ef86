"""The reference runtime, built from fuseinfer ops; runs on CPU tensors too.

engine.py (the step loop and overlap) joins scheduler.py (which requests run; memory
bookkeeping in kv_pool.py and radix_cache.py) and model_runner.py (the device side of a
step: model, KV cache, attention plans, CUDA graphs, sampling), one runner per rank.
engine_args.py holds its configuration, step_output.py what a step reports.
"""
