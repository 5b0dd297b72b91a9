"""CUDA fast paths (CuPy RawKernel).  Nothing here touches the GPU at import time."""
