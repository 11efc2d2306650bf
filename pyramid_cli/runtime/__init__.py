"""The process and the machine: ``devices`` (``--device`` → torch device), ``threads`` (CPU threads per
phase of work), ``allocator`` (glibc malloc kept from returning memory), ``fileio`` (atomic writes,
strict JSON reads) and ``locking`` (one writer per output folder)."""
