"""Where the work runs: the compute device, and giving freed memory back to the system.

Small helpers every layer of the package may use (they import nothing of mstoolkit but its
error type), so that training, inference and the phantom need not import each other for them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from mstoolkit.data.io import MSToolkitInputError

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device", "release_memory"]


def pick_device(device: str = "auto", *, verbose: bool = True) -> torch.device:
    """``"auto"``: CUDA if present, else Apple MPS, else CPU (saying so in one line).

    >>> pick_device("cpu").type
    'cpu'
    """
    import torch  # here, not at the top: the phantom and the data modules use this module without torch

    choices = ("auto", "cpu", "cuda", "mps")
    base = str(device).split(":")[0]
    if base not in choices:
        raise MSToolkitInputError(f"'device' must be one of {', '.join(choices)}, got {device!r}.")
    if base == "cuda" and not torch.cuda.is_available():
        raise MSToolkitInputError("device 'cuda' was asked for but torch sees no CUDA GPU; use device='auto' or 'cpu'.")
    if base == "mps" and not torch.backends.mps.is_available():
        raise MSToolkitInputError("device 'mps' was asked for but this machine has no Apple GPU; use 'auto' or 'cpu'.")
    if base != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if verbose:
        print(f"No GPU found: running on the CPU ({torch.get_num_threads()} threads); training will be slower.")
    return torch.device("cpu")


def release_memory() -> None:
    """Give memory that Python has freed back to the operating system.

    On Linux, glibc keeps freed blocks of many arrays for reuse instead of returning them,
    so a kernel's resident memory stays at its peak after ``del``: ~700 MB after notebook
    03's training, enough to push a 2 GB Binder kernel over its limit later. ``malloc_trim``
    returns them. Elsewhere (macOS, Windows, musl) this only runs the garbage collector.
    """
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
