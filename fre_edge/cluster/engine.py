"""Where partitions run: Dask (``local:N`` or a scheduler's address) or this process.

Dask re-runs a task whose worker died (up to its ``allowed-failures``); since a partition writes one
file under a fixed name, the re-run replaces it and no row is duplicated.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import FreEdgeError


def _need_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise FreEdgeError('--dask needs dask.distributed; run: pip install "fre-edge[dask]"') from None


def check_address(address: str) -> None:
    """``local:N`` or ``tcp://``/``tls://`` with dask.distributed installed, or one line saying what to write."""
    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        if not n.isdigit() or not 1 <= int(n) <= 256:
            raise FreEdgeError(f"--dask {address}: write local:N with N workers (1 to 256), e.g. local:2")
    elif not address.startswith(("tcp://", "tls://")):
        raise FreEdgeError(f"--dask {address!r}: use local:N or tcp://SCHEDULER:8786")
    else:
        from urllib.parse import urlsplit

        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise FreEdgeError(f"--dask {address}: write the scheduler's address with its port, e.g. "
                               f"{address.split('://')[0]}://{parts.hostname or 'SCHEDULER'}:8786")
    _need_dask()


@contextmanager
def dask_client(address: str):
    """A distributed.Client for ``local:N`` (a LocalCluster of N one-thread worker processes on 127.0.0.1,
    no dashboard) or ``tcp://HOST:PORT`` (an existing scheduler; its workers must see the same paths)."""
    check_address(address)
    from distributed import Client, LocalCluster

    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        import logging

        with LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield client
    else:
        try:
            client = Client(address, timeout=30)
        except OSError as exc:
            raise FreEdgeError(f"--dask {address}: cannot reach the scheduler ({exc}); check the address") from None
        with client:
            yield client


def run_partitions(fn, jobs: list[tuple], client=None):
    """Yield ``fn(*job)``'s results as they finish, on the Dask ``client`` or in this process."""
    if client is None:
        for job in jobs:
            yield fn(*job)
        return
    from distributed import as_completed

    futures = [client.submit(fn, *job, pure=False) for job in jobs]
    for future in as_completed(futures):
        yield future.result()


def reduce_partitions(fn, jobs: list[tuple], merge, client=None, on_done=None):
    """``merge`` of ``fn(*job)`` over all jobs, exactly (merge must be associative and commutative).

    On a Dask ``client`` the partial results stay on the workers and are merged there in pairs as they
    finish (a tree built as results arrive, the pattern of Dask's docs for ``as_completed``), so neither
    the client nor one worker holds more than a few of them; only the final result comes back.
    ``on_done(job)`` is called as each job's own result is ready.
    """
    if not jobs:
        raise ValueError("no partitions to reduce")
    if client is None:
        acc = None
        for job in jobs:
            result = fn(*job)
            acc = result if acc is None else merge(acc, result)
            if on_done is not None:
                on_done(job)
        return acc
    from distributed import as_completed

    futures = [client.submit(fn, *job, pure=False) for job in jobs]
    leaves = {f.key: job for f, job in zip(futures, jobs)}
    done = as_completed(futures)
    del futures  # as_completed holds them until they are yielded; then pending or a merge holds them
    pending = None
    for future in done:
        if future.status == "error":
            raise future.exception()
        if on_done is not None and future.key in leaves:
            on_done(leaves[future.key])
        if pending is None:
            pending = future
        else:
            done.add(client.submit(merge, pending, future, pure=False))
            pending = None
    return pending.result()
