"""Fan independent work (evaluation chunks) out over worker processes with Ray.

`parallel_map(fn, items, workers)` runs ``fn(item)`` for every item and returns the results in
input order: in process, one after the other, when ``workers <= 1`` (Ray is not imported at
all), else as Ray tasks over ``workers`` processes. ``fn`` must be a module-level function
(Ray pickles it by reference) and its items and results picklable.

Local by default and loopback only: a private Ray instance bound to 127.0.0.1 with
``num_cpus=workers``, no dashboard, no usage statistics, no metrics collection (`RAY_ENV`),
shut down afterwards. ``address`` ("HOST:PORT" or "auto") joins an existing cluster instead;
that is the caller's explicit choice. `listening_sockets` lists the sockets Ray's processes
listen on (the tests check that all are on 127.0.0.1).

Ray is imported lazily inside the functions: ``core`` imports without it.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

LOOPBACK = "127.0.0.1"
# Environment of the driver while a local Ray instance starts (the GCS, raylet and workers
# inherit it): no usage statistics, no `uv run` runtime environment, no metrics / telemetry.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps the node address on loopback: without it Ray
# turns `_node_ip_address="127.0.0.1"` into the machine's routable address
# (`ray._private.services.resolve_ip_for_localhost`) and its servers listen there.
RAY_ENV: Dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_enable_metrics_collection": "0",
    "RAY_enable_open_telemetry": "0",
    "RAY_DISABLE_IMPORT_WARNING": "1",
}
OBJECT_STORE_BYTES = 128 * 1024 * 1024   # evaluation results are small


def chunks(items: Sequence[Any], n: int) -> List[List[Any]]:
    """`items` split into at most `n` contiguous, non-empty chunks of near-equal size, in order."""
    items = list(items)
    n = max(1, min(int(n), len(items)))
    q, r = divmod(len(items), n)
    out, a = [], 0
    for i in range(n):
        b = a + q + (1 if i < r else 0)
        out.append(items[a:b])
        a = b
    return [c for c in out if c]


@contextlib.contextmanager
def _patched_env(env: Dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def ray_session(workers: int, address: Optional[str] = None) -> Iterator[Any]:
    """A Ray connection for the block, yielding the ``ray`` module.

    Reuses one that is already initialised (and leaves it up). Otherwise ``address=None``
    starts a private local instance (``ray.init(address="local")``: neither ``RAY_ADDRESS`` nor
    a cluster found in /tmp/ray is joined implicitly) bound to 127.0.0.1 with `workers` CPUs,
    and shuts it down at the end; an explicit `address` joins that cluster (disconnecting at
    the end)."""
    local = address is None
    with _patched_env(RAY_ENV if local else {}):
        import ray
        from ray._private import ray_constants

        if ray.is_initialized():
            yield ray
            return
        cluster = ray_constants.ENABLE_RAY_CLUSTER   # read from RAY_ENV when ray is first imported
        ray_constants.ENABLE_RAY_CLUSTER = not local
        try:
            if local:
                ray.init(address="local", num_cpus=int(workers), include_dashboard=False,
                         _node_ip_address=LOOPBACK, log_to_driver=False, logging_level=logging.WARNING,
                         object_store_memory=OBJECT_STORE_BYTES)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            try:
                yield ray
            finally:
                ray.shutdown()
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = cluster


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class _Done:
    """The results of `parallel_map` as they arrive, with a length (for tqdm-like `progress`)."""

    def __init__(self, it: Iterator[Any], n: int):
        self._it, self._n = it, n

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Any]:
        return self._it


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 1, address: Optional[str] = None,
                 progress: Optional[Callable[[Iterable[Any]], Iterable[Any]]] = None,
                 timeout: Optional[float] = None) -> List[Any]:
    """``[fn(item) for item in items]``, in input order; over `workers` Ray processes when
    ``workers > 1`` (at most `workers` tasks in flight, also on a cluster given by `address`).

    `progress` wraps the iterable of finished items (e.g. ``lambda it: tqdm(it, ...)``; it has
    a ``len``). A worker's exception is re-raised here as the original exception (type and
    message; the remote traceback is chained), after the tasks still running are cancelled.
    `timeout` (s) bounds each wait for the next finished task (`TimeoutError`); None waits."""
    items = list(items)
    if int(workers) <= 1:
        it: Iterable[Any] = (fn(x) for x in items)
        return list(progress(_Done(iter(it), len(items))) if progress else it)
    results: List[Any] = [None] * len(items)
    with ray_session(int(workers), address) as ray:
        remote = ray.remote(num_cpus=1, max_retries=0)(_apply)
        fn_ref = ray.put(fn)
        pending: Dict[Any, int] = {}

        def finished() -> Iterator[int]:
            nxt = 0
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < int(workers):
                    pending[remote.remote(fn_ref, items[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
                if not done:
                    raise TimeoutError(f"no evaluation task finished within {timeout} s")
                ref = done[0]
                i = pending.pop(ref)
                results[i] = _get(ray, ref)
                yield i

        try:
            for _ in (progress(_Done(finished(), len(items))) if progress else finished()):
                pass
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    return results


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from e
        raise


# ------------------------------------------------------------------ loopback evidence
def _descendants(root: int) -> Set[int]:
    children: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _socket_inodes(pid: int) -> Set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def _addr(hexaddr: str) -> Tuple[str, int]:
    """An address of /proc/net/{tcp,udp}[6] ("0100007F:1F90") as (ip, port); IPv4-mapped IPv6
    addresses as their IPv4 form."""
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip: Any = ipaddress.IPv4Address(raw[::-1])
    else:  # four host-order 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        ip = ip.ipv4_mapped or ip
    return str(ip), int(port, 16)


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "0A": "LISTEN"}


def sockets(pids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
    """TCP sockets that listen or connect (LISTEN, ESTABLISHED, SYN_SENT) and bound UDP sockets,
    from /proc/net, as dicts ``{proto, state, ip, port, remote_ip, remote_port, pid, name, inode}``;
    only those owned by `pids` when given (else all, pid None when the owner is unknown)."""
    want = None if pids is None else set(pids)
    owner: Dict[str, int] = {}
    for pid in (want if want is not None else [int(d) for d in os.listdir("/proc") if d.isdigit()]):
        for ino in _socket_inodes(pid):
            owner[ino] = pid
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{proto}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            state = _TCP_STATES.get(cols[3]) if proto.startswith("tcp") else "BOUND"
            pid = owner.get(cols[9])
            if state is None or (want is not None and pid is None):
                continue
            ip, port = _addr(cols[1])
            rip, rport = _addr(cols[2])
            name = ""
            if pid is not None:
                with contextlib.suppress(OSError):
                    with open(f"/proc/{pid}/comm") as f:
                        name = f.read().strip()
            out.append({"proto": proto, "state": state, "ip": ip, "port": port, "remote_ip": rip,
                        "remote_port": rport, "pid": pid, "name": name, "inode": cols[9]})
    return out


def listening_sockets(pids: Optional[Iterable[int]] = None) -> List[Dict[str, Any]]:
    """The listening TCP and bound UDP sockets of `sockets`."""
    return [s for s in sockets(pids) if s["state"] in ("LISTEN", "BOUND")]


def ray_process_ids() -> Set[int]:
    """This process and its descendants (a local Ray instance's GCS, raylet, workers, agents)."""
    return {os.getpid()} | _descendants(os.getpid())


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def off_loopback(socks: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The sockets of `socks` bound to, or connected to, an address that is not loopback."""
    bad = []
    for s in socks:
        remote = s["state"] in ("ESTABLISHED", "SYN_SENT")
        if not is_loopback(s["ip"]) or (remote and not is_loopback(s["remote_ip"])):
            bad.append(s)
    return bad
