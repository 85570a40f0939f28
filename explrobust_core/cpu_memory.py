"""Freed CPU memory kept for the next tensors: the process-level setting the CLI, the dashboard and the workers make.

Torch-free, so that the CLI can make it before it knows which command (and which imports) it runs.
"""

from __future__ import annotations

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_reusing_freed_memory: bool | None = None


def reuse_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep freed CPU memory in this process for the next tensors (glibc's malloc; elsewhere nothing, False).

    Why: glibc gives large freed blocks back to the kernel, so the next tensor of that size is page-faulted in
    and zeroed page by page. Measured on this project's 2-core CPU machine (one thread, bench/REPORT.md): PGD-20
    on 256 mnist5k images took 210,000–390,000 page faults per run and 1.85–2.3 s, with this 6 faults and
    1.50–1.57 s; integrated gradients (50 steps, 32 images) 0.77–0.82 s against 0.42–0.53 s. Here blocks up to
    ``mmap_threshold`` come from the heap, and up to ``trim_threshold`` of free heap is kept instead of returned:
    after a peak the process keeps that much more resident memory. The CLI, the dashboard's server, job workers,
    Ray actors and the benchmarks call it once; a notebook may too. Idempotent; returns whether glibc took the
    settings.
    """
    global _reusing_freed_memory
    if _reusing_freed_memory is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            _reusing_freed_memory = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                                         and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
            _reusing_freed_memory = False
    return _reusing_freed_memory
