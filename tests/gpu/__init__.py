"""Tests that need a CUDA device: workers on the GPU (run them with ``bash bench/gpu.sh``); skipped without one."""
