"""Starting a tensor-parallel engine from one process: `EngineArgs.tp` > 1 makes the Engine
(as rank 0, in the calling process) start ranks 1..tp-1, each following its steps
(rank_follower.follow_steps) on its own GPU (cuda:rank; gloo processes on the CPU), after
all join one process group (NCCL on GPUs, gloo on the CPU) through a local TCP rendezvous.
The ranks are fresh interpreters (`python -m fuseinfer.runtime.tensor_parallel_launch`),
not multiprocessing children, so a daemonic caller (the server's engine process) can start
them too. `stop` waits for them once the engine has told them to stop.

Under torchrun (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in the environment, as
across nodes), every process runs the same command: the Engine joins that group instead
(`join_launcher`), on cuda:LOCAL_RANK; rank 0 goes on with the command, and every other
rank follows the steps inside the Engine's constructor and then ends its process (exit
code 0) once rank 0 closes its engine."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed.parallel_state import ParallelState
from .engine_args import EngineArgs


@dataclass
class LaunchedRanks:
    parallel: ParallelState  # rank 0's
    processes: list[subprocess.Popen]

    def stop(self, timeout: float = 60.0) -> None:
        """Wait for the other ranks (already told to stop) and leave the group."""
        for proc in self.processes:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
        if dist.is_initialized():
            dist.destroy_process_group()


def _backend(args: EngineArgs) -> str:
    cuda = args.device.startswith("cuda") or (args.device == "auto" and
                                              torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, world: int, address: str, backend: str) -> ParallelState:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=world)
    return ParallelState(rank, world, dist.group.WORLD)


def _follower(rank: int, args: EngineArgs, address: str, backend: str) -> None:
    from .rank_follower import follow_steps

    parallel = _join(rank, args.tp, address, backend)
    try:
        follow_steps(dataclasses.replace(args, tp=1), parallel)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """One rank > 0: `python -m fuseinfer.runtime.tensor_parallel_launch --rank R ...`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--backend", choices=("nccl", "gloo"), required=True)
    parser.add_argument("--engine-args", required=True, help="EngineArgs as JSON")
    ns = parser.parse_args(argv)
    args = EngineArgs(**json.loads(ns.engine_args))
    _follower(ns.rank, args, ns.address, ns.backend)
    return 0


def under_launcher(args: EngineArgs) -> bool:
    """Whether torchrun (or another torch.distributed launcher) started tp processes."""
    return args.tp > 1 and os.environ.get("WORLD_SIZE") == str(args.tp) \
        and "RANK" in os.environ


def join_launcher(args: EngineArgs) -> ParallelState:
    """Join the launcher's group; ranks other than 0 follow the steps, then exit."""
    backend = _backend(args)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://")
    parallel = ParallelState(dist.get_rank(), dist.get_world_size(), dist.group.WORLD)
    if not parallel.is_first:
        from .rank_follower import follow_steps

        try:
            follow_steps(dataclasses.replace(args, tp=1), parallel)
        finally:
            dist.destroy_process_group()
        raise SystemExit(0)
    return parallel


def launch_ranks(args: EngineArgs) -> LaunchedRanks:
    """Spawn ranks 1..tp-1 and join the group as rank 0 (this process)."""
    if dist.is_initialized():
        raise RuntimeError("tensor parallelism: this process is already in a process group; "
                           "build the Engine with its ParallelState instead of tp")
    if _backend(args) == "nccl" and torch.cuda.device_count() < args.tp:
        raise ValueError(f"EngineArgs.tp: {args.tp} ranks need {args.tp} GPUs, "
                         f"{torch.cuda.device_count()} visible")
    address, backend = f"tcp://127.0.0.1:{_free_port()}", _backend(args)
    package_root = str(Path(__file__).resolve().parents[2])  # importable as in this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    payload = json.dumps(dataclasses.asdict(args))
    procs = [subprocess.Popen([sys.executable, "-m", "fuseinfer.runtime.tensor_parallel_launch",
                               "--rank", str(rank), "--address", address, "--backend",
                               backend, "--engine-args", payload], env=env)
             for rank in range(1, args.tp)]
    return LaunchedRanks(_join(0, args.tp, address, backend), procs)


if __name__ == "__main__":
    sys.exit(main())
