"""Task runners for sharded work: threads (default) or Dask (a LocalCluster, or an existing scheduler)."""
from __future__ import annotations

from typing import Any, Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from tda_clean.config import RunnerConfig
from tda_clean.errors import InputError


def run_shard(job: Callable[[Any], Any], item: Any) -> Any:
    """One shard of a detector's work (a Prefect task: visible, retried, and placed by the task runner)."""
    return job(item)


shard_task = task(run_shard, name="influence-shard", cache_policy=NO_CACHE, persist_result=False, retries=1)


def check_dask_address(address: str, timeout_s: float = 5.0) -> None:
    """InputError naming ``address`` when no Dask scheduler answers there within ``timeout_s``."""
    from distributed import Client

    try:
        Client(address, timeout=f"{timeout_s}s").close()
    except (OSError, TimeoutError) as exc:
        raise InputError(f"runner.address: no Dask scheduler answers at {address} ({type(exc).__name__}); "
                         "start one (`dask scheduler`) or drop runner.address to use a LocalCluster") from None


def task_runner_for(config: RunnerConfig):
    """The Prefect task runner the config asks for (a fresh one: use it as a context manager)."""
    if config.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        # One shard at a time: every shard's engine shares one model, and torch.func.functional_call swaps that
        # model's parameters in place during a forward pass, so two concurrent shards can read each other's
        # parameters (one shard of scores came back all zeros). Torch's own threads already use every core.
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if config.address:
        return DaskTaskRunner(address=config.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.n_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def prefect_mapper(config: RunnerConfig) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]]:
    """A ``FitContext.map`` that runs each shard as a Prefect task on the configured task runner."""

    def mapper(job: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        with task_runner_for(config) as runner:
            futures = [runner.submit(shard_task, parameters={"job": job, "item": item}) for item in items]
            return [future.result() for future in futures]

    return mapper
