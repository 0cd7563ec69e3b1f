"""The numba-cuda and cuda-hybrid backends (backend.py, hybrid.py), their fused training step (fused_step.py)
and the CUDA kernels they are built from, one module per computation."""
