"""The parts of xaibench.dist that need no second process: environment, shards, merging rows."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from xaibench import dist
from xaibench.core.errors import ConfigError
from xaibench.dist import world as world_module
from xaibench.pipelines import checkpoint as checkpoints


@pytest.mark.parametrize("n", [0, 1, 5, 7, 16])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_are_disjoint_ordered_blocks_covering_every_row_once(n, size):
    rows = np.arange(100, 100 + n)
    parts = [dist.World(rank=rank, size=size).shard(rows) for rank in range(size)]
    assert np.concatenate(parts).tolist() == rows.tolist()
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_environment_torchrun_sets():
    assert dist.from_env({}) == dist.World()
    world = dist.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)
    with pytest.raises(ConfigError, match="RANK=4"):
        dist.from_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="integers"):
        dist.from_env({"RANK": "one", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_each_process_gets_the_gpu_of_its_local_rank():
    two = dist.World(rank=1, size=2, local_rank=1000)
    assert dist.place(two, torch.device("cpu")) == torch.device("cpu")
    assert dist.place(two, torch.device("cuda", 0)) == torch.device("cuda", 0)  # as given
    assert dist.place(dist.World(), torch.device("cuda")) == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1000.*--nproc-per-node"):
        dist.place(two, torch.device("cuda"))


def test_one_process_launches_nothing(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with dist.launch(torch.device("cpu"), tmp_path / "logs") as world:
        assert world.size == 1 and world.counter is None
        assert world.broadcast("x") == "x" and world.all_gather(3) == [3]
        world.barrier()
    assert not torch.distributed.is_initialized() and not (tmp_path / "logs").exists()


def test_one_process_on_a_cuda_device_makes_it_the_current_one(tmp_path, monkeypatch):
    from contextlib import contextmanager

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    current = [torch.device("cuda", 0)]

    @contextmanager
    def device(chosen):  # torch.cuda.device, without a GPU
        current.append(chosen)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    with dist.launch(torch.device("cuda", 1), tmp_path / "logs") as world:
        assert world.device == torch.device("cuda", 1) and current[-1] == world.device
    assert current == [torch.device("cuda", 0)]  # the previous one again


@pytest.mark.parametrize("rank", [0, 1])
def test_logging_to_a_file_is_undone_with_the_root_level_restored(tmp_path, rank):
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        logs = world_module._log_to_file(dist.World(rank=rank, size=2), tmp_path)
        try:
            assert root.level == logging.INFO
            assert len(root.handlers) == len(handlers) + (2 if rank == 0 else 1)
            logging.getLogger("xaibench.test").info("written")
        finally:
            world_module._stop_logging(logs)
        assert root.level == logging.ERROR and root.handlers == handlers
    finally:
        root.setLevel(level)
    text = (tmp_path / f"rank-{rank}.log").read_text()
    assert f"rank {rank} INFO xaibench.test: written" in text


def test_merge_rows_takes_each_row_from_the_first_part_that_has_it():
    first = {
        "key": np.array("k"),
        "done": np.array([True, False, False, True]),
        "clean": np.array([0.1, np.nan, np.nan, 0.4], np.float32),
        "value:deletion": np.array([1.0, np.nan, np.nan, 4.0]),
    }
    second = {
        "key": np.array("k"),
        "done": np.array([True, True, False, False]),
        "clean": np.array([9.0, 0.2, np.nan, np.nan], np.float32),
        "value:deletion": np.array([9.0, 2.0, np.nan, np.nan]),
        "value:constant_map": np.array([False, True, False, False]),
        "curve:deletion": np.arange(8, dtype=np.float32).reshape(4, 2),
    }
    merged = checkpoints.merge_rows([first, second])
    assert str(merged["key"]) == "k"
    assert merged["done"].tolist() == [True, True, False, True]
    np.testing.assert_array_equal(merged["value:deletion"], [1.0, 2.0, np.nan, 4.0])
    assert merged["value:constant_map"].tolist() == [False, True, False, False]
    np.testing.assert_array_equal(
        merged["curve:deletion"], [[np.nan, np.nan], [2, 3], [np.nan, np.nan], [np.nan, np.nan]]
    )
    assert merged["clean"].dtype == np.float32
    alone = checkpoints.gather_rows(dist.World(), first, np.array([0]))
    assert alone.keys() == first.keys() and all(alone[k] is first[k] for k in first)


def test_an_evaluation_resumes_from_the_checkpoints_of_every_process(tmp_path):
    checkpoint = tmp_path / ".tgrad-polycam.checkpoint.npz"
    two = [dist.World(rank=rank, size=2) for rank in range(2)]
    assert checkpoints.checkpoint_of(dist.World(), checkpoint) == checkpoint
    assert checkpoints.checkpoint_of(two[1], checkpoint).name == (
        ".tgrad-polycam.checkpoint.rank-00001-of-00002.npz"
    )
    for world, rows in zip(two, ([0, 1], [3]), strict=True):
        done, clean, deletion = np.zeros(5, bool), np.full(5, np.nan, "f4"), np.full(5, np.nan)
        done[rows], clean[rows], deletion[rows] = True, np.array(rows, "f4") / 10, rows
        saved = checkpoints.Checkpoint(checkpoint, "key", world)
        saved.save({"done": done, "clean": clean, "value:deletion": deletion})
    other = checkpoints.Checkpoint(checkpoint, "another evaluation", dist.World(rank=0, size=3))
    other.save({"done": np.ones(5, bool), "clean": np.zeros(5, "f4")})
    files = checkpoints.checkpoint_files(checkpoint)
    assert [f.name.split(".")[-2] for f in files] == [
        "rank-00000-of-00002",
        "rank-00000-of-00003",
        "rank-00001-of-00002",
    ]
    resumed = checkpoints.merge_rows(checkpoints.Checkpoint(checkpoint, "key").load())
    assert resumed["done"].tolist() == [True, True, False, True, False]
    np.testing.assert_array_equal(resumed["value:deletion"], [0, 1, np.nan, 3, np.nan])
    np.testing.assert_array_equal(resumed["clean"], np.array([0, 0.1, np.nan, 0.3, np.nan], "f4"))
    assert checkpoints.checkpoint_files(None) == [] and isinstance(files[0], Path)
    other.remove()
    assert checkpoints.checkpoint_files(checkpoint) == []
