"""``python tests/slow_saves.py <trainer script> <flags...>``: the trainer with every adapter file of a
checkpoint written 0.3 s late, so that a test can kill it in the middle of saving a checkpoint."""

import runpy
import sys
import time

import amd_utils.training

write = amd_utils.training.save_file


def late_save_file(*args, **kwargs):
    time.sleep(0.3)
    return write(*args, **kwargs)


amd_utils.training.save_file = late_save_file
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
