"""``accelerate launch --config_file examples/wan/accelerate_fsdp2.yaml tests/fsdp_on_cpu.py <trainer script>
<flags...>`` with ``ACCELERATE_USE_CPU=true``: the trainer under accelerate's FSDP2 on CPU processes (gloo).
accelerate turns FSDP on for GPU-like devices only, while torch's FSDP2 itself shards on CPU too; this turns it
on for CPU processes, so that a test can run the trainer's FSDP path here."""

import runpy
import sys

import accelerate.state
from accelerate.utils import DistributedType

init = accelerate.state.AcceleratorState.__init__


def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = init_with_fsdp_on_cpu
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
