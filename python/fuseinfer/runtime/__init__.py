"""The reference runtime: KV memory pools, the radix prefix cache, and (to come) the
scheduler, model runner and engine. Built from fuseinfer ops; runs on CPU tensors too."""
