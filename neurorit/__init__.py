"""neurorit: mine, switch off and tune the neurons that make a RAG model follow noisy passages."""

import os

# Where JAX is installed beside PyTorch (common on GPU images), the first library that touches a
# JAX device makes it reserve 75 % of the GPU's memory for itself; measured on an H200, that left
# PyTorch 35 GiB of 140 and training a 3B model ran out of memory. neurorit never uses JAX.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
