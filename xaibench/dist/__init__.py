"""Runs under torchrun: several processes, on one node or several, each with its share of the images.

Everything torchrun-specific lives here. `launch` reads the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK), starts the process group (NCCL for CUDA tensors and Gloo for the small CPU
messages this module sends, or Gloo alone on CPU), puts each process on `cuda:LOCAL_RANK`, logs each
process to its own file and quiets the others' output. Without torchrun it yields a `World` of one
process and none of this happens: the code paths are the same, every collective is a no-op.

Generation: each process writes its own shard store (xaibench/store/shards.py) and process 0 merges
them. Evaluation: each process evaluates its share of the store rows, checkpoints them in its own
file, and the results are gathered on every process. docs/store-format.md has the rules that make a
re-run with any number of processes complete exactly the missing rows.
"""

from xaibench.dist.progress import Progress
from xaibench.dist.world import World, from_env, launch, place

__all__ = ["Progress", "World", "from_env", "launch", "place"]
