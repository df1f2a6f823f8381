"""collectives.py - what an all-reduce algorithm sends over which link, and how long that takes.

Used by bench/scaling --nodes (the bytes each node's link should carry per step, to set
beside the tc byte counters) and bench/project --nodes (the all-reduce time on emulated
nodes). Ranks are placed on nodes; a transfer between ranks of one node stays in shared
memory, a transfer between nodes uses the sender's link up and the receiver's link down.

Algorithms (n bytes per rank, p ranks):
  binomial      Open MPI's libnbc MPI_Iallreduce when the buffer is MPI_IN_PLACE (what
                ddtrain's MPI backend calls; Open MPI 4.1 coll/libnbc nbc_iallreduce.c,
                allred_sched_diss): a binomial-tree reduce to rank 0, each parent receiving
                its children's whole buffers one after another, then a binomial broadcast,
                rank 0 sending to all its children at once.
  ring          reduce-scatter then all-gather around the ranks: 2(p-1) steps of n/p.
  hierarchical  ddtrain's shm backend (issue 14) and NCCL's kind: inside each node a
                reduce-scatter over shared memory leaves each of the node's first S ranks (S:
                the smallest node's rank count) the sum of one slice, n/S; the owners of a
                slice, one per node, all-reduce it with a ring (reduce-scatter, all-gather);
                an all-gather inside each node hands every rank the result. The links carry
                the rings only: 2(N-1)/N n each way per node, whatever the ranks per node.

The time model is a fluid one: a transfer starts alpha after what it waits for has finished;
the transfers in flight share each link direction (beta bytes/s) max-min fairly, and, where
beta_shared is given, all transfers between nodes together share that too (emulated nodes:
one machine's CPU moves the bytes of every link); transfers inside a node run at beta_shm.
It ignores the reduction arithmetic.
"""

from collections import defaultdict


def placement(nodes, ranks_per_node, mapping="slot"):
    """Node of each rank: by slot (ranks 0..k-1 on node 0, ...) or by node (round robin)."""
    p = nodes * ranks_per_node
    if mapping == "node":
        return [r % nodes for r in range(p)]
    return [r // ranks_per_node for r in range(p)]


def _ceil_log2(p):
    k = 0
    while (1 << k) < p:
        k += 1
    return k


def transfers(algorithm, where, nbytes, chunk_bytes=None):
    """The transfers of one all-reduce: a list of dicts src, dst (ranks), bytes, after (the
    indices of the transfers that must finish first). chunk_bytes (hierarchical only): the
    buffer goes through in chunks of that size, one ring after the other (ddtrain's shm
    backend keeps one ring in flight per rank); None: the whole buffer at once."""
    p = len(where)
    out = []
    if p <= 1:
        return out

    def add(src, dst, size, after):
        out.append({"src": src, "dst": dst, "bytes": size, "after": sorted(set(after))})
        return len(out) - 1

    if algorithm == "binomial":
        maxr = _ceil_log2(p)
        received = {r: [] for r in range(p)}  # reduce transfers into each rank, in order
        # Reduce: round r, ranks with v % 2^r == 2^(r-1) send to v - 2^(r-1), once they have
        # reduced their own children's buffers; a parent receives one child after another.
        for r in range(1, maxr + 1):
            for v in range(p):
                if v % (1 << r) == (1 << (r - 1)):
                    parent = v - (1 << (r - 1))
                    after = received[v] + received[parent][-1:]
                    received[parent].append(add(v, parent, nbytes, after))
        got = {0: received[0]}  # what a rank must have before it sends in the broadcast

        def children(v):
            if v == 0:
                return [1 << r for r in range(maxr) if (1 << r) < p]
            return [v + (1 << r) for r in range(maxr) if v < (1 << r) and v + (1 << r) < p]

        pending = [0]
        while pending:
            v = pending.pop(0)
            for c in children(v):
                got[c] = [add(v, c, nbytes, got[v])]
                pending.append(c)
        return out

    if algorithm == "ring":
        _ring(list(range(p)), nbytes, add, {r: [] for r in range(p)})
        return out

    if algorithm == "hierarchical":
        nodes = sorted(set(where))
        local = {n: [r for r in range(p) if where[r] == n] for n in nodes}
        owners = min(len(ranks) for ranks in local.values())
        chunks = [nbytes]
        if chunk_bytes:
            full, rest = divmod(nbytes, chunk_bytes)
            chunks = [chunk_bytes] * int(full) + ([rest] if rest else [])
        ring_done = {r: [] for r in range(p)}  # an owner's previous ring, to wait for
        for size in chunks:
            piece = size / owners
            owned = {r: [] for r in range(p)}  # the local reduce-scatter into an owner
            for n in nodes:
                for r in local[n]:
                    for k in range(owners):
                        if r != local[n][k]:
                            owned[local[n][k]].append(add(r, local[n][k], piece, []))
            done = {r: [] for r in range(p)}
            for k in range(owners):
                ring = [local[n][k] for n in nodes]
                last = _ring(ring, piece, add, {r: owned[r] + ring_done[r] for r in ring})
                for r in ring:
                    done[r] = last[r]
                    ring_done[r] = last[r]
            for n in nodes:
                for k in range(owners):
                    owner = local[n][k]
                    for r in local[n]:
                        if r != owner:
                            add(owner, r, piece, done[owner] + owned[owner])
        return out

    raise ValueError(f"unknown all-reduce algorithm '{algorithm}' (binomial, ring, hierarchical)")


def _ring(ranks, nbytes, add, ready):
    """Ring all-reduce among `ranks`: 2(k-1) steps, each rank sending one of k chunks to the
    next and receiving one from the previous; a rank posts step s once both of its step s-1
    transfers are done (and step 0 once `ready[rank]` is). Returns, per rank, the indices of
    its last two transfers (what "its ring is done" waits for)."""
    k = len(ranks)
    if k <= 1:
        return {r: list(ready.get(r, [])) for r in ranks}
    chunk = nbytes / k
    prev = {r: list(ready.get(r, [])) for r in ranks}
    for _ in range(2 * (k - 1)):
        now = {r: [] for r in ranks}
        for i, r in enumerate(ranks):
            nxt = ranks[(i + 1) % k]
            t = add(r, nxt, chunk, prev[r])
            now[r].append(t)    # r's send
            now[nxt].append(t)  # nxt's receive
        prev = now
    return prev


def link_bytes(algorithm, where, nbytes):
    """Bytes each node sends over its link (tx) and receives (rx) in one all-reduce:
    {node: [tx, rx]}."""
    per = defaultdict(lambda: [0.0, 0.0])
    for n in set(where):
        per[n]
    for t in transfers(algorithm, where, nbytes):
        a, b = where[t["src"]], where[t["dst"]]
        if a != b:
            per[a][0] += t["bytes"]
            per[b][1] += t["bytes"]
    return dict(per)


def allreduce_seconds(algorithm, where, nbytes, alpha, beta, beta_shm=5e9, beta_shared=None,
                      chunk_bytes=None):
    """Time of one all-reduce of nbytes: the fluid model described above. alpha in s, beta
    and beta_shm in bytes/s (per link and direction), beta_shared in bytes/s over all links
    together (None: no such limit); chunk_bytes as for transfers()."""
    ts = transfers(algorithm, where, nbytes, chunk_bytes)
    if not ts:
        return 0.0
    remaining = [t["bytes"] for t in ts]
    finished = [None] * len(ts)
    start = [None] * len(ts)
    now = 0.0
    while any(f is None for f in finished):
        # Transfers whose predecessors are done start alpha later.
        for i, t in enumerate(ts):
            if start[i] is None and all(finished[j] is not None for j in t["after"]):
                start[i] = max([finished[j] for j in t["after"]], default=0.0) + alpha
        active = [i for i in range(len(ts)) if finished[i] is None and start[i] is not None
                  and start[i] <= now + 1e-15]
        upcoming = [start[i] for i in range(len(ts)) if finished[i] is None
                    and start[i] is not None and start[i] > now + 1e-15]
        if not active:
            now = min(upcoming)
            continue
        rate = _fair_rates(active, ts, where, beta, beta_shm, beta_shared)
        # Advance to the next event: a transfer finishing or one starting.
        step = min(remaining[i] / rate[i] for i in active)
        if upcoming:
            step = min(step, min(upcoming) - now)
        now += step
        for i in active:
            remaining[i] -= rate[i] * step
            if remaining[i] <= 1e-6 * max(1.0, ts[i]["bytes"]):
                remaining[i] = 0.0
                finished[i] = now
    return max(finished)


def _fair_rates(active, ts, where, beta, beta_shm, beta_shared=None):
    """Max-min fair rates: every link direction (node up, node down) holds beta, and all the
    links together beta_shared; a transfer inside a node has its own beta_shm."""
    rate = {}
    users = defaultdict(list)
    for i in active:
        a, b = where[ts[i]["src"]], where[ts[i]["dst"]]
        if a == b:
            rate[i] = beta_shm
        else:
            users[("up", a)].append(i)
            users[("down", b)].append(i)
            if beta_shared:
                users[("shared",)].append(i)
    capacity = {link: (beta_shared if link == ("shared",) else beta) for link in users}
    left = {i for i in active if i not in rate}
    while left:
        # The tightest link fixes the rate of all its unfixed transfers.
        share = {link: capacity[link] / len([i for i in ids if i in left])
                 for link, ids in users.items() if any(i in left for i in ids)}
        link = min(share, key=share.get)
        for i in [i for i in users[link] if i in left]:
            rate[i] = share[link]
            left.discard(i)
            for other, ids in users.items():
                if i in ids:
                    capacity[other] -= share[link]
    return rate
