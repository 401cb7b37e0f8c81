__version__ = "0.1.0"

import os

# Every entry point imports this package before CUDA starts (the CLI, `python -m longcat_nb.training`, the workbench's
# training process, the notebooks): without expandable segments the caching allocator fragments under block swap and
# activation offload (the 24 / 16 GB plans ran out with ~2 GiB reserved but unallocated). A user's own setting wins.
if not (os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")):
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
