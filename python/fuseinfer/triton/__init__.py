"""Triton kernels, one module per kernel. Importing fuseinfer does not import these (nor
Triton); an op's CUDA path imports its kernel module on first use."""
