"""``accelerate launch tests/train_and_dump.py <trainer module> <folder> <trainer flags...>``: train in this
process, then save this process's two adapters as ``<folder>/rank<i>_<adapter>.safetensors``, so that a test
can compare what every process of a multi-process run ends with."""

import importlib
import os
import sys

from accelerate import PartialState
from safetensors.torch import save_file

from amd_utils.lora import ADAPTERS, lora_state_dict

trainer, folder = importlib.import_module(sys.argv[1]), sys.argv[2]
model = trainer.main(trainer.parse_args(sys.argv[3:]))
for name in ADAPTERS:
    save_file(
        lora_state_dict(model, name), os.path.join(folder, f"rank{PartialState().process_index}_{name}.safetensors")
    )
