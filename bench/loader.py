"""Loader only: two-view samples/s, exactness and memory of this project's loader against the release's recipe (a
PyTorch DataLoader with PIL + torchvision), webdataset and the peers a user would pick instead (MosaicML Streaming,
LitData, SPDL: ``bench.peers``), same mixture, recipe, batch size and workers.

The suite: ``dali-cpu`` / ``dali-gpu`` (``TrainLoader.batches()``, the colour stage eager and compiled), then a
batch-size sweep of train.py's loader on this device, then ``reference``, ``webdataset`` and the peers; and the
time to plan a 1.5M-sample epoch. Its passes: ``--rounds`` throughput rounds, the rows interleaved (A B C A B C …,
each ratio to the reference a median and range over the rounds), then one memory pass per row (peak PSS sampled
apart from the timed rounds), then one exactness audit per row (``bench.exactness.audit`` over one epoch of each
loader's order). How the baselines are configured: bench/README.md ("Loader", "The peer loaders").
"""

from __future__ import annotations

import io
import statistics

import click
import numpy as np

from bench import harness
from bench.exactness import audit, epoch_samples, share_text
from bench.peers import PEERS  # a light module: the peers themselves are imported where they run
from bench.torchvision_recipe import torchvision_transform
from shards.base.host import resolve_device

BACKENDS = ("dali-cpu", "dali-gpu", "reference", "webdataset", *PEERS)
COLOUR = ("eager", "compiled")
ROUNDS, QUICK_ROUNDS = 3, 1  # throughput rounds over the interleaved rows (--rounds; --quick)


class ArrayDataset:
    """The release's dataset: decoded uint8 images in RAM, PIL + torchvision per view."""

    def __init__(self, images, labels, transforms):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return [t(img) for t in self.transforms], int(self.labels[i])


class ViewsAndLabel:
    """(image, label) -> (view 1, view 2, …, label): one tensor per column, so ``.batched()`` stacks each view."""

    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, sample):
        img, label = sample
        return (*[t(img) for t in self.transforms], int(label))


def decoded_arrays(mixture):
    """Every sample of every source decoded once into one uint8 array (what the release keeps in RAM);
    returns (images, labels, offset of each source's first sample)."""
    sets = [harness.read_images(s.path) for s in mixture.sources]
    offsets = np.cumsum([0] + [len(r) for r, *_ in sets[:-1]])
    images = np.stack([im for *_, ims, _ in sets for im in ims])
    return images, np.concatenate([lab for *_, lab in sets]), offsets


def reference_loader(mixture, aug, batch_size: int, workers: int, device: str):
    """The release's recipe in a DataLoader configured as PyTorch documents: default collation, ``workers``
    persistent workers, pinned memory only for a GPU; its sampler is the exact weighted epoch the DALI loader
    reads. Returns (DataLoader, number of decoded images)."""
    import torch

    images, labels, offsets = decoded_arrays(mixture)
    order = reference_order(mixture, offsets)
    ds = ArrayDataset(images, labels, [torchvision_transform(v) for v in aug.views])
    cuda, keep = device.startswith("cuda"), workers > 0
    dl = torch.utils.data.DataLoader(
        ds, batch_size, sampler=order, num_workers=workers, drop_last=True, persistent_workers=keep, pin_memory=cuda
    )
    return dl, len(images)


def reference_order(mixture, offsets) -> list[int]:
    """The reference's sampler: the exact weighted epoch (``plan_epoch``, seed 0, epoch 0) as positions in the
    decoded array (``offsets``: where each source starts)."""
    from loaders.batch.sampler import plan_epoch

    plan = plan_epoch(mixture.counts, mixture.weights, 0, 0)
    return (np.asarray(offsets)[plan.source] + plan.index).tolist()


def webdataset_urls(mixture) -> list[str]:
    """Each source's tars ``round(weight)`` times: resampled shards drawn from it mix the sources like the plan."""
    copies = [(s, max(int(round(s.weight)), 1) if s.weight > 0 else 0) for s in mixture.sources]
    return [str(s.path / sh.file) for s, k in copies for _ in range(k) for sh in s.manifest.shards]


def _npy_to_pil(data):
    from PIL import Image

    return Image.fromarray(np.load(io.BytesIO(data), allow_pickle=False))


def webdataset_loader(mixture, aug, batch_size: int, workers: int, device: str, rebatch: int = 1000):
    """webdataset as its README, ``train-resnet50-wds`` example and FAQ recommend for training (bench/README.md):
    resampled shards, ``.shuffle(1000)``, PIL decoding, batches made in the workers, the cross-worker reshuffle."""
    import webdataset as wds

    ds = (
        wds.WebDataset(webdataset_urls(mixture), resampled=True, shardshuffle=False)
        .shuffle(1000)
        .decode(wds.handle_extension("npy", _npy_to_pil), "pil")
        .to_tuple("jpg;png;npy", "cls")
        .map(ViewsAndLabel([torchvision_transform(v) for v in aug.views]))
        .batched(batch_size, partial=False)
    )
    cuda = device.startswith("cuda")
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda)
    return loader.unbatched().shuffle(rebatch).batched(batch_size) if rebatch else loader


def time_baseline(backend, shards, aug: str, batch_size, workers, device, timing: harness.Timing, memory=True) -> dict:
    """``reference`` or ``webdataset`` timed by the rule; on a GPU each batch is copied to it (pinned,
    non-blocking) as a training loop would. ``memory``: sample peak PSS during the run."""
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    mixture, recipe = parse_shards_args(shards), preset(aug)
    if backend == "reference":
        dl, decoded = reference_loader(mixture, recipe, batch_size, workers, device)
        extra = {"decoded_images": decoded}
        source = (b for _ in iter(int, 1) for b in dl)  # epoch after epoch
    else:
        source = iter(webdataset_loader(mixture, recipe, batch_size, workers, device))
        extra = {"shard_urls": len(webdataset_urls(mixture)), "cross_worker_shuffle": 1000}
    n = len(recipe.views)

    def run_one() -> int:
        batch = next(source)
        if device.startswith("cuda"):
            [v.to(device, non_blocking=True) for v in batch[:n]]
        return len(batch[-1])

    row = harness.timed(run_one, timing, sync=harness.device_sync(device), memory=memory)
    getattr(source, "close", lambda: None)()  # the workers stop now, not at interpreter exit
    return {**row, **extra}


def measure_plan(counts, weights, seed: int = 0, min_plans: int = 50) -> tuple[dict, dict]:
    """Planning one epoch: (its figures — mean time over ``min_plans`` plans after one, tracemalloc peak of one
    more, which counts numpy's buffers, and the plan's own arrays —, the timed row)."""
    import tracemalloc

    from loaders.batch.sampler import plan_epoch

    epochs = iter(range(1, 10**9))
    row = harness.timed(
        lambda: len(plan_epoch(counts, weights, seed, next(epochs))), harness.Timing(1, min_plans, 0.0), memory=False
    )
    tracemalloc.start()
    plan = plan_epoch(counts, weights, seed, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "plan_s": round(row["seconds"] / row["timed_batches"], 4),
        "plans_timed": row["timed_batches"],
        "plan_mb": round(peak / 2**20, 2),
        "plan_len": len(plan),
        "plan_array_mb": round((plan.source.nbytes + plan.index.nbytes) / 2**20, 2),
    }, row


# ---------------------------------------------------------------------------------------------------
# Exactness: each loader's order over one epoch, through one audit
# ---------------------------------------------------------------------------------------------------
def dali_order(shards, aug: str, batch_size: int):
    """This project's order: ``TrainLoader.feed`` over epoch 0, what its DALI graph reads, batch by batch (the graph
    keeps the feed's order; decoding and augmenting are skipped, they do not choose samples)."""
    from loaders.batch.loader import TrainLoader
    from loaders.recipe.augment import preset
    from loaders.recipe.mixture import parse_shards_args

    loader = TrainLoader(parse_shards_args(shards), preset(aug), batch_size, device="cpu", loader_device="cpu")
    feed = loader.feed((0, k) for k in range(loader.steps_per_epoch))
    while True:
        try:
            feed()
        except StopIteration:
            return
        fed = feed.in_flight.popleft()
        yield fed.source, fed.index


class _Places:
    """The reference's dataset with nothing decoded: a position of the decoded array -> (source, index)."""

    def __init__(self, offsets):
        self.offsets = np.asarray(offsets)

    def __getitem__(self, i):
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return s, int(i - self.offsets[s])


def reference_batches(shards, batch_size: int, workers: int):
    """The reference's DataLoader (the same sampler, batch size, workers, ``drop_last``) over its places."""
    import torch

    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args(shards)
    offsets = np.cumsum([0] + mixture.counts[:-1])
    dl = torch.utils.data.DataLoader(
        _Places(offsets), batch_size, sampler=reference_order(mixture, offsets), num_workers=workers, drop_last=True
    )
    for source, index in dl:
        yield source.numpy(), index.numpy()


def webdataset_batches(shards, batch_size: int, workers: int):
    """webdataset's stream as its row configures it (resampled shards, the shuffles, the batching), without the
    decoding and the transform (they do not choose samples): each sample's place from its tar and key. Endless:
    the audit takes one epoch's worth."""
    import webdataset as wds

    from loaders.recipe.mixture import parse_shards_args
    from shards.read.reader import SourceReader

    mixture = parse_shards_args(shards)
    where = {}
    for s_id, s in enumerate(mixture.sources):
        keys = SourceReader(s.path, s.manifest).keys
        index = {str(k): i for i, k in enumerate(keys)}
        for sh in s.manifest.shards:
            where[str(s.path / sh.file)] = (s_id, index)
    ds = (
        wds.WebDataset(webdataset_urls(mixture), resampled=True, shardshuffle=False)
        .shuffle(1000)
        .to_tuple("__url__", "__key__")
        .batched(batch_size, partial=False)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False)
    for urls, keys in loader.unbatched().shuffle(1000).batched(batch_size):
        places = [(where[u][0], where[u][1][k]) for u, k in zip(urls, keys)]
        yield np.array([p[0] for p in places]), np.array([p[1] for p in places])


def audit_backend(backend, shards, aug: str, batch_size: int, workers: int, device: str, work_dir=None) -> dict:
    """The exactness figures (``bench.exactness.audit``) of one epoch of ``backend``'s order, and how long
    taking them took (``audit_s``; not a throughput)."""
    import time

    from bench import peers
    from loaders.recipe.mixture import parse_shards_args

    mixture = parse_shards_args(shards)
    if backend.startswith("dali"):
        batches = dali_order(shards, aug, batch_size)
    elif backend == "reference":
        batches = reference_batches(shards, batch_size, workers)
    elif backend == "webdataset":
        batches = webdataset_batches(shards, batch_size, workers)
    else:
        batches = peers.audit_batches(backend, shards, batch_size, workers, device, work_dir or peers.peers_work_dir())
    t0 = time.perf_counter()
    kinds = [s.kind for s in mixture.sources]
    row = audit(
        batches, mixture.counts, mixture.weights, kinds, max_samples=epoch_samples(mixture.counts, mixture.weights)
    )
    getattr(batches, "close", lambda: None)()
    return {**row, "audit_s": round(time.perf_counter() - t0, 2)}


# ---------------------------------------------------------------------------------------------------
# The suite: rows, interleaved throughput rounds, a memory pass, an audit pass
# ---------------------------------------------------------------------------------------------------
def rows_of(names, colours, sizes, shards, preset, workers, device, work_dir):
    """The grid's rows as (label, throughput function, its kwargs without ``timing``/``memory``, the fields the row
    starts with): DALI rows x colour stages at the first batch size, train.py's loader on this device (its DALI
    pipeline and colour stage) at the sweep's sizes, then the baselines and the peers."""
    cuda = device.startswith("cuda")

    def dali(name, batch_size, compile):
        label = name + ("-compiled" if compile or (compile is None and cuda) else "")
        kwargs = dict(shards=shards, aug=preset, batch_size=batch_size, device=device)
        kwargs.update(loader_device=name[5:], num_threads=workers, compile=compile)
        colour = "compiled" if label.endswith("compiled") else "eager"
        return (
            f"{label} batch {batch_size}",
            harness.time_loader,
            kwargs,
            {"backend": label, "colour": colour, "batch_size": batch_size},
        )

    dalis = [n for n in names if n.startswith("dali") and (cuda or n == "dali-cpu")]
    yield from (dali(n, sizes[0], c == "compiled") for n in dalis for c in colours)
    default = "dali-gpu" if cuda else "dali-cpu"  # what train.py runs on this device, with its colour stage
    yield from (dali(default, bs, None) for bs in sizes[1:] if default in dalis)
    for n in (n for n in names if not n.startswith("dali")):
        kwargs = dict(shards=shards, aug=preset, batch_size=sizes[0], workers=workers, device=device)
        fn = time_baseline if n in ("reference", "webdataset") else _time_peer
        kwargs = (
            {"backend": n, **kwargs}
            if n in ("reference", "webdataset")
            else {"name": n, **kwargs, "work_dir": work_dir}
        )
        yield n, fn, kwargs, {"backend": n, "colour": None, "batch_size": sizes[0]}


def _time_peer(**kw):
    from bench.peers import time_peer

    return time_peer(**kw)


def interleave(rows: list, rounds: int) -> list[tuple[int, int]]:
    """The throughput passes in the order they run: (round, row) for every row in each round, A B C A B C …, so
    a drift of the machine over the run reaches every row alike instead of the rows run last."""
    return [(r, i) for r in range(rounds) for i in range(len(rows))]


def ratio_summary(rates: list, reference: list, key: str = "vs_reference") -> dict:
    """A row's ratio to the reference, round by round (each round's rate over the reference's in the same round),
    as its median and range over the rounds; rounds where either rate is missing are left out. ``key``: the
    fields' prefix (``vs_best_peer``: against the fastest peer of each round)."""
    ratios = [round(a / b, 3) for a, b in zip(rates, reference) if a and b]
    if not ratios:
        return {key: None, f"{key}_min": None, f"{key}_max": None, f"{key}_rounds": []}
    return {
        key: round(statistics.median(ratios), 2),
        f"{key}_min": min(ratios),
        f"{key}_max": max(ratios),
        f"{key}_rounds": ratios,
    }


def best_peer_rates(passes: list[list[dict]], peer_rows: list[int], rounds: int) -> list:
    """The fastest peer's rate in each round (None where no peer ran)."""
    best = []
    for k in range(rounds):
        rates = [passes[j][k].get("samples_per_s") or 0 for j in peer_rows if k < len(passes[j])]
        best.append(max(rates) if rates and max(rates) > 0 else None)
    return best


def combine(fields: dict, passes: list[dict]) -> dict:
    """One row from its throughput rounds: the median rate, the rates per round, the counts summed."""
    rates = [p.get("samples_per_s") for p in passes]
    known = [r for r in rates if r]
    row = {**fields, **passes[0]}
    row.update(
        samples_per_s=round(statistics.median(known), 1) if known else None,
        samples_per_s_rounds=rates,
        samples_per_s_min=min(known) if known else None,
        samples_per_s_max=max(known) if known else None,
        rounds=len(passes),
        timed_batches=sum(p.get("timed_batches", 0) for p in passes),
        timed_samples=sum(p.get("timed_samples", 0) for p in passes),
        seconds=round(sum(p.get("seconds", 0.0) for p in passes), 6),
        meets_minimum=all(p.get("meets_minimum", False) for p in passes),
    )
    return row


MEMORY_FIELDS = ("peak_pss_mb", "peak_pss_file_mb", "peak_pss_anon_mb", "peak_rss_sum_mb", "processes")
MEMORY_FIELDS += ("memory_samples", "memory_probe_cpu_s", "memory_probe_core_share")


def memory_fields(memory_pass: dict) -> dict:
    """The memory figures of a row, from its memory pass (with the rate that pass ran at, which the probe may have
    slowed: ``memory_pass_samples_per_s``)."""
    return {
        **{k: memory_pass.get(k) for k in MEMORY_FIELDS},
        "memory_pass_samples_per_s": memory_pass.get("samples_per_s"),
    }


def _one(label, fn, kwargs, isolate: bool, catch: bool) -> dict:
    """One pass of a row; with ``catch`` (the peers, the audits) a failure becomes ``{"failed": why}``."""
    click.echo(f"  {label} ...", err=True)
    try:
        row = harness.in_fresh_process(fn, **kwargs) if isolate else fn(**kwargs)
    except Exception as e:  # in process (--no-isolate) a peer may raise anything; isolated, one line comes back
        if not catch:
            raise
        click.echo(f"  {label}: failed ({e})", err=True)
        return {"failed": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    if "samples_per_s" in row:
        memory = f", peak PSS {harness._fmt(row['peak_pss_mb'])} MiB" if "peak_pss_mb" in row else ""
        click.echo(f"  {label}: {harness._fmt(row.get('samples_per_s'))} samples/s{memory}", err=True)
    return row


def run_suite(
    rows, shards, timing: harness.Timing, rounds: int, isolate: bool, audit_on: bool, workers, device, work_dir
):
    """The passes of every row: ``rounds`` interleaved throughput rounds without the memory probe, one memory
    pass each, one audit each. A peer that is not installed, or whose pass fails, keeps its row with the reason
    (``skipped`` / ``failed``)."""
    from bench import peers

    out, passes, dead = [], [[] for _ in rows], {}
    for i, (label, *_rest, fields) in enumerate(rows):
        if fields["backend"] in PEERS and (why := peers.unavailable(fields["backend"])):
            click.echo(f"  {label}: skipped ({why})", err=True)
            dead[i] = {"skipped": why}
    for r, i in interleave(rows, rounds):
        label, fn, kwargs, fields = rows[i]
        if i in dead:
            continue
        kw = {**kwargs, "timing": timing, "memory": False}
        row = _one(f"{label} (round {r + 1}/{rounds})", fn, kw, isolate, fields["backend"] in PEERS)
        if "failed" in row:
            dead[i] = row
        passes[i].append(row)
    for i, (label, fn, kwargs, fields) in enumerate(rows):
        peer = fields["backend"] in PEERS
        if i in dead:
            out.append(
                {
                    **fields,
                    "samples_per_s": None,
                    **dead[i],
                    **({"peer_version": peers.version(fields["backend"])} if peer else {}),
                }
            )
            continue
        row = combine(fields, passes[i])
        mem = _one(f"{label} (memory pass)", fn, {**kwargs, "timing": timing, "memory": True}, isolate, peer)
        row.update(memory_fields(mem) if "failed" not in mem else {"memory_failed": mem["failed"]})
        if audit_on:
            akw = dict(backend=fields["backend"], shards=shards, aug=kwargs.get("aug"), batch_size=fields["batch_size"])
            akw.update(workers=workers, device=device, work_dir=work_dir)
            exact = _one(f"{label} (audit)", audit_backend, akw, isolate, True)
            row.update(exact if "failed" not in exact else {"audit_failed": exact["failed"]})
            row["gen_share"] = share_text(row)
        out.append(row)
    return out, passes


@harness.command("loader")
@harness.shards_option()
@harness.preset_option
@click.option("--batch-size", default=512, show_default=True, type=click.IntRange(1))
@click.option("--sweep", default="", help="more batch sizes for the DALI rows, e.g. 64,128,256,1024 (a per-batch cost)")
@harness.workers_option
@harness.device_option
@click.option("--backends", default=",".join(BACKENDS), show_default=True)
@click.option("--colour", default="eager,compiled", show_default=True, help="the DALI rows' colour stage(s)")
@click.option(
    "--rounds",
    type=click.IntRange(1),
    help=f"throughput rounds over the interleaved rows [{ROUNDS}; --quick {QUICK_ROUNDS}]",
)
@click.option("--audit/--no-audit", default=True, show_default=True, help="the exactness audit of one epoch per row")
@click.option(
    "--work-dir", type=click.Path(file_okay=False), help="the peers' converted sets [~/.cache/adainf-bench/peers]"
)
@harness.timing_options()
@harness.isolate_option
@click.option("--plan-only", is_flag=True, help="only time planning a 1.5M-sample epoch")
@click.option("--no-save", is_flag=True, help="write no JSON")
def main(
    shards,
    preset,
    batch_size,
    sweep,
    workers,
    device,
    backends,
    colour,
    rounds,
    audit,
    work_dir,
    timing,
    isolate,
    plan_only,
    **o,
):
    """Two-view samples/s, exactness and peak PSS of each loading backend."""
    from bench.peers import peers_work_dir, version
    from loaders.recipe.augment import preset as recipe

    names = harness.comma_list(backends, str, BACKENDS, "--backends")
    colours = harness.comma_list(colour, str, COLOUR, "--colour")
    sizes = list(dict.fromkeys([batch_size, *(harness.comma_list(sweep, int, flag="--sweep") if sweep else [])]))
    device, workers = resolve_device(device), harness.workers_or_cores(workers)
    rounds = rounds or (QUICK_ROUNDS if timing.quick else ROUNDS)
    work_dir = str(work_dir or peers_work_dir())
    plan, row = measure_plan([50_000, 1_000_000], [10, 1], min_plans=timing.min_batches)
    rows = [{"backend": "plan_epoch", "planned_samples": 1_500_000, **row, **plan}]
    if "dali-gpu" in names and not device.startswith("cuda") and not plan_only:
        why = f"--device {device}: no GPU here, so DALI's GPU pipeline cannot run"
        print(f"dali-gpu: skipped ({why})")
        rows.append({"backend": "dali-gpu", "samples_per_s": None, "skipped": why})
    passes = []
    if not plan_only:
        shards = harness.resolve_shards(shards)
        grid = list(rows_of(names, colours, sizes, shards, preset, workers, device, work_dir))
        fields = {"device": device, "views": len(recipe(preset).views), "workers": workers}
        done, passes = run_suite(grid, shards, timing, rounds, isolate, audit, workers, device, work_dir)
        rows += [{**r, **fields} for r in done]
    ref = next((i for i, (*_, f) in enumerate(grid) if f["backend"] == "reference"), None) if not plan_only else None
    peer_rows = [i for i, (*_, f) in enumerate(grid) if f["backend"] in PEERS] if not plan_only else []
    best = best_peer_rates(passes, peer_rows, rounds)
    for i, r in enumerate(rows[len(rows) - len(passes) :]):
        rates = [p.get("samples_per_s") for p in passes[i]]
        r.update(ratio_summary(rates, [p.get("samples_per_s") for p in passes[ref]] if ref is not None else []))
        if r["backend"].startswith("dali") and any(best):  # the targets: this project against the best peer
            r.update(ratio_summary(rates, best, "vs_best_peer"))
    settings = {"shards": list(shards), "preset": preset, "batch_size": batch_size, "sweep": sizes[1:]}
    settings.update(workers=workers, device=device, colour=colours, isolate=isolate, rounds=rounds, audit=audit)
    settings.update(memory="a pass of its own per row, after the timed rounds", peers={n: version(n) for n in PEERS})
    settings.update(work_dir=work_dir, **timing.settings())
    print(
        f"workers/threads per backend: {workers}, batch {batch_size}, preset {preset}, device {device}, rounds {rounds}"
    )
    columns = (
        "backend samples_per_s vs_reference vs_reference_min vs_reference_max vs_best_peer peak_pss_mb real_exact "
    )
    columns += "generated_exact samples_lost gen_share batches_outside_bound batch_size startup_s conversion_s "
    columns += "timed_batches skipped failed"
    harness.finish("loader", settings, rows, columns, o["out_dir"], save=not o["no_save"])
