"""No test may touch the network: the Hub is offline for every test, in-process and in the subprocesses the
tests start (set before anything imports huggingface_hub, which reads it once)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
