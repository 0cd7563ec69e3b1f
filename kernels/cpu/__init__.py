"""The numba-cpu backend (backend.py) and the compiled kernels it is built from, one module per computation."""
