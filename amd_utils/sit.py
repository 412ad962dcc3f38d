"""Reading and writing SiT pipeline folders (``SiTPipeline`` in ``pipeline_sit.py``)."""

import json
import os
import shutil

from .pipeline_sit import SiTPipeline

PIPELINE_FILE = os.path.join(os.path.dirname(__file__), "pipeline_sit.py")


def save_sit_pipeline(output_dir, transformer, scheduler, vae=None, default_sigmas=None):
    """Write a folder that stock diffusers loads with
    ``DiffusionPipeline.from_pretrained(output_dir, trust_remote_code=True)``: the components, a copy of
    ``pipeline_sit.py``, and ``model_index.json`` naming that file's ``SiTPipeline`` as the class."""
    pipeline = SiTPipeline(transformer=transformer, scheduler=scheduler, vae=vae, default_sigmas=default_sigmas)
    pipeline.save_pretrained(output_dir)
    shutil.copy(PIPELINE_FILE, os.path.join(output_dir, "pipeline_sit.py"))
    index_path = os.path.join(output_dir, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["_class_name"] = ["pipeline_sit", "SiTPipeline"]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)
