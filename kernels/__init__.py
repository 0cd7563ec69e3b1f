"""fastmnist's kernels: the backend contract, the reference array code and the compiled backends.

Installed as `fastmnist.kernels` (pyproject.toml maps this folder there); see README.md beside this file
for the map of backends and compiled paths.
"""

if __name__ == "kernels":
    # Run from the repository root, this folder would also import as a top-level `kernels` package and
    # shadow an unrelated PyPI package of that name: refuse loudly instead.
    raise ImportError("fastmnist's kernels folder imports as fastmnist.kernels, not as 'kernels'")
