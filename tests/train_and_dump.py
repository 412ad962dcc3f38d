"""``accelerate launch tests/train_and_dump.py <trainer module> <folder> <trainer flags...>``: train in this
process, then save this process's two adapters as ``<folder>/rank<i>_<adapter>.safetensors`` (and its GAN head as
``rank<i>_head.safetensors`` in a run with one), so that a test can compare what every process of a
multi-process run ends with."""

import importlib
import os
import sys

from accelerate import PartialState
from safetensors.torch import save_file

from amd_utils.lora import ADAPTERS, lora_state_dict
from amd_utils.training import AdapterUpdates

made = []  # the run's AdapterUpdates, which holds the GAN head
original_init = AdapterUpdates.__init__
AdapterUpdates.__init__ = lambda self, *args, **kwargs: made.append(self) or original_init(self, *args, **kwargs)
trainer, folder = importlib.import_module(sys.argv[1]), sys.argv[2]
trainer.main(trainer.parse_args(sys.argv[3:]))
rank = PartialState().process_index
if made[0].head is not None:
    head = made[0].accelerator.unwrap_model(made[0].head)
    save_file(
        {k: v.contiguous() for k, v in head.state_dict().items()}, os.path.join(folder, f"rank{rank}_head.safetensors")
    )
for name in ADAPTERS:
    save_file(lora_state_dict(made[0].models[name], name), os.path.join(folder, f"rank{rank}_{name}.safetensors"))
