"""fastmnist's kernels: the reference array code and the compiled backends. Installed as fastmnist.kernels."""
