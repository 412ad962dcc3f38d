"""The same numbers from the CPU examples (the digits demo and studies, the 2D study) on every machine with AVX2.

torch (ATen), MKL and oneDNN pick their kernels by CPU: AVX-512 or AVX2 for ATen and oneDNN, and for MKL also by
make (``MKL_CBWR`` is its "conditional numerical reproducibility" mode). Each changed trained weights here: ATen's
avx2 kernels against its default ones the digits teacher, reward and judge and the 2D study's students; MKL's AVX2
path against its default on an AMD CPU the digits reward and judge; oneDNN's SSE4.1 against AVX2 all three digits
models. They are read when torch loads, so an example pins them by starting itself again with them set. (Fixed
thread counts and draws that do not depend on a library's version are each example's own.)
"""

import os
import sys

PINNED_CPU_ARITHMETIC = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_arithmetic(module):
    """Start ``python -m module`` again in this process's place, with the same arguments and
    :data:`PINNED_CPU_ARITHMETIC` in the environment, unless it is there already (a variable set by hand keeps its
    value); the processes it starts inherit it. Only where the CPU runs AVX2, as torch detects it: torch takes
    ``ATEN_CPU_CAPABILITY=avx2`` on trust, and a CPU without AVX2 (an older x86 or a VM's generic model, or an ARM
    machine) would stop at its first AVX2 instruction. For a program's ``__main__`` only."""
    missing = {name: value for name, value in PINNED_CPU_ARITHMETIC.items() if name not in os.environ}
    if not missing:
        return
    if "ATEN_CPU_CAPABILITY" in missing:
        import torch  # its detection, before the variable overrides it in the new process

        if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            return
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], {**os.environ, **missing})
