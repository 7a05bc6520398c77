"""Annotation loading at COCO train2017 scale: pycocotools per rank vs the shared columnar cache.

    python benchmarks/bench_data.py [--ranks 8] [--images 118287] [--instances 860000] [--work-dir DIR]

1. Generates (once, reused while the parameters match) a COCO-format instance file of train2017's size
   in the work folder: 118,287 images, ~860k instances (80 categories with COCO's non-contiguous ids),
   1-3 polygons of 10-40 points per instance, ~1% crowd instances as uncompressed RLE; ~450 MB.
2. (a) baseline: `--ranks` processes started together, each ``pycocotools.coco.COCO(json)``.
   (b) ours: the cache is built once (timed, in its own process), then `--ranks` processes started
   together each open it (mmap), build the sampler's index (usable images, aspect groups, the first
   global batch) and read one image's full annotations (segmentations included).
   (c) creating the 1/10 subset (parse the source once, choose, write json + manifest).
   Per rank: seconds from process start (before imports) to ready, peak RSS (VmHWM), and at ready
   Rss / Pss / private memory from /proc/self/smaps_rollup (Pss splits shared page-cache pages
   between the processes mapping them).
If `--ranks` pycocotools processes would not fit in memory (peak of one x ranks > 85% of
MemAvailable), they run in waves; the table says so. Prints a markdown table.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

T_START = time.perf_counter()

logger = logging.getLogger("bench_data")
COCO_CAT_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


# --------------------------------------------------------------------------------------------------
# worker side
# --------------------------------------------------------------------------------------------------
def _mem_stats():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) / 1024
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0].rstrip(":") in ("Rss", "Pss", "Private_Clean", "Private_Dirty",
                                                       "Shared_Clean", "Shared_Dirty"):
                    out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    except OSError:
        pass
    return out


def worker(kind: str, json_file: str, result_file: str):
    if kind == "baseline":
        from pycocotools.coco import COCO

        coco = COCO(json_file)
        img = max(coco.imgToAnns, key=lambda i: len(coco.imgToAnns[i]))
        n = len(coco.loadAnns(coco.getAnnIds(imgIds=[img])))
        extra = {"images": len(coco.imgs), "annotations": len(coco.anns), "probe_anns": n}
    elif kind == "ours":
        import numpy as np

        from rethink.data.coco import load_coco_index
        from rethink.data.samplers import BatchStream

        idx = load_coco_index(json_file)
        usable = idx.usable_mask()
        rows = np.flatnonzero(usable)
        groups = (np.asarray(idx.a["width"])[rows] <= np.asarray(idx.a["height"])[rows]).astype(np.uint8)
        _, first, _ = next(BatchStream(len(rows), 16, 0, groups).iter_from(0))
        probe = int(np.argmax(np.asarray(idx.a["ann_count"])))
        anns = idx.annotations(probe)
        n = len(anns["segmentation"])
        assert n == int(idx.a["ann_count"][probe]) and all(s is not None for s in anns["segmentation"])
        extra = {"images": idx.num_images, "annotations": idx.num_annotations, "probe_anns": n,
                 "first_batch": [int(v) for v in rows[first][:4]]}
    elif kind == "build":
        from rethink.data.coco import build_coco_index

        build_coco_index(json_file)
        extra = {}
    elif kind == "subset":
        from rethink.data.subsets import Selection, make_subsets

        out_dir = os.path.join(os.path.dirname(result_file), "subsets")
        (js, _), = make_subsets(json_file, "bench", [Selection.parse("1of10")], [0], out_dir, force=True)
        extra = {"subset_bytes": os.path.getsize(js)}
    elif kind == "torch":
        import torch  # noqa: F401

        extra = {}
    else:
        raise SystemExit(f"unknown worker kind {kind}")
    res = {"kind": kind, "ready_s": time.perf_counter() - T_START, **_mem_stats(), **extra}
    with open(result_file, "w") as f:
        json.dump(res, f)


# --------------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------------
def generate(path: str, num_images: int, num_instances: int, seed: int = 0):
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    t0 = time.perf_counter()
    land = rng.random(num_images) < 0.75
    W = np.where(land, 640, rng.integers(360, 641, num_images))
    H = np.where(land, rng.integers(360, 641, num_images), 640)
    # instances per image: ~1% empty, others geometric-ish with the right mean
    counts = rng.poisson(num_instances / num_images * 1.01, num_images)
    counts[rng.random(num_images) < 0.01] = 0
    diff = num_instances - int(counts.sum())
    adj = rng.choice(np.flatnonzero(counts > 0), abs(diff), replace=True)
    np.add.at(counts, adj, 1 if diff > 0 else -1)
    counts = np.maximum(counts, 0)
    ids = np.sort(rng.choice(600000, num_images, replace=False)) + 1
    tmp = path + ".tmp"
    ann_id = 1
    with open(tmp, "w") as f:
        f.write('{"info":{"description":"synthetic COCO-train2017-sized benchmark file","year":2024},')
        f.write('"licenses":[{"id":1,"name":"x","url":""}],"categories":')
        f.write(json.dumps([{"id": c, "name": f"class{c}", "supercategory": "x"} for c in COCO_CAT_IDS],
                           separators=(",", ":")))
        f.write(',"images":[')
        f.write(",".join(f'{{"id":{i},"file_name":"{i:012d}.jpg","height":{h},"width":{w},"license":1,'
                         f'"coco_url":"http://images.cocodataset.org/train2017/{i:012d}.jpg",'
                         f'"date_captured":"2013-11-14 11:18:45","flickr_url":""}}'
                         for i, h, w in zip(ids.tolist(), H.tolist(), W.tolist())))
        f.write('],"annotations":[')
        first = True
        for img in range(num_images):
            n = int(counts[img])
            if not n:
                continue
            h, w = int(H[img]), int(W[img])
            parts = []
            for _ in range(n):
                cat = COCO_CAT_IDS[int(rng.integers(80))]
                bw, bh = rng.uniform(8, 0.6 * w), rng.uniform(8, 0.6 * h)
                x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                if rng.random() < 0.01:  # crowd: uncompressed RLE, jittered rectangle in column-major runs
                    xa, xb = int(x0), int(x0 + bw)
                    ya = np.clip(int(y0) + rng.integers(-3, 4, xb - xa), 0, h - 2)
                    yb = np.clip(int(y0 + bh) + rng.integers(-3, 4, xb - xa), ya + 1, h)
                    runs = [xa * h + int(ya[0])]
                    for c in range(xb - xa):
                        runs.append(int(yb[c] - ya[c]))
                        nxt = int(ya[c + 1]) if c + 1 < xb - xa else (w - xb) * h
                        runs.append(int(h - yb[c]) + nxt)
                    seg = f'{{"counts":{json.dumps(runs, separators=(",", ":"))},"size":[{h},{w}]}}'
                    area = float(sum(runs[1::2]))
                    bbox = [xa, int(ya.min()), xb - xa, int(yb.max() - ya.min())]
                    crowd = 1
                else:
                    npoly = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
                    polys = []
                    xs_all, ys_all = [], []
                    for p in range(npoly):
                        k = int(rng.integers(10, 41))
                        t = np.sort(rng.uniform(0, 2 * np.pi, k))
                        r = rng.uniform(0.6, 1.0, k)
                        cx, cy = x0 + bw / 2 + p * 0.1 * bw, y0 + bh / 2
                        xs = np.clip(cx + r * np.cos(t) * bw / 2, 0, w).round(2)
                        ys = np.clip(cy + r * np.sin(t) * bh / 2, 0, h).round(2)
                        xy = np.empty(2 * k)
                        xy[0::2], xy[1::2] = xs, ys
                        polys.append(xy.tolist())
                        xs_all.append(xs)
                        ys_all.append(ys)
                    seg = json.dumps(polys, separators=(",", ":"))
                    xs, ys = np.concatenate(xs_all), np.concatenate(ys_all)
                    bbox = [round(float(xs.min()), 2), round(float(ys.min()), 2),
                            round(float(xs.max() - xs.min()), 2), round(float(ys.max() - ys.min()), 2)]
                    area = round(float(bbox[2] * bbox[3] * 0.6), 2)
                    crowd = 0
                parts.append(f'{{"segmentation":{seg},"area":{area},"iscrowd":{crowd},"image_id":{int(ids[img])},'
                             f'"bbox":{json.dumps(bbox, separators=(",", ":"))},"category_id":{cat},"id":{ann_id}}}')
                ann_id += 1
            f.write(("" if first else ",") + ",".join(parts))
            first = False
        f.write("]}")
    os.replace(tmp, path)
    logger.info("generated %s (%.0f MB, %d images, %d instances) in %.0f s", path, os.path.getsize(path) / 2**20,
                num_images, ann_id - 1, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------
def _run(kind, json_file, out_dir, n, env):
    """Start n workers together; return (wall seconds, [results])."""
    files = [os.path.join(out_dir, f"{kind}_{i}.json") for i in range(n)]
    for p in files:
        if os.path.exists(p):
            os.unlink(p)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind, "--json", json_file,
                               "--result", p], env=env) for p in files]
    rcs = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(rcs):
        raise SystemExit(f"{kind} workers failed: exit codes {rcs}")
    res = []
    for p in files:
        with open(p) as f:
            res.append(json.load(f))
    return wall, res


def _mem_available_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 1024
    return float("inf")


def _summ(res, key):
    vals = [r.get(key, float("nan")) for r in res]
    return f"{min(vals):.0f}-{max(vals):.0f}" if len(vals) > 1 and max(vals) - min(vals) >= 1 else f"{max(vals):.0f}"


def _summ_s(res):
    vals = [r["ready_s"] for r in res]
    return f"{min(vals):.1f}-{max(vals):.1f}" if len(vals) > 1 else f"{vals[0]:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--images", type=int, default=118287)
    ap.add_argument("--instances", type=int, default=860001)
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "rethink_bench_data"))
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.json, args.result)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.makedirs(args.work_dir, exist_ok=True)
    json_file = os.path.join(args.work_dir, f"instances_bench_{args.images}_{args.instances}.json")
    if not os.path.isfile(json_file):
        generate(json_file, args.images, args.instances)
    size_mb = os.path.getsize(json_file) / 2**20
    cache = os.path.join(args.work_dir, "cache")
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ, RETHINK_CACHE=cache, OMP_NUM_THREADS="1")
    out = os.path.join(args.work_dir, "results")
    os.makedirs(out, exist_ok=True)
    with open(json_file, "rb") as f:  # warm the page cache for everyone alike
        while f.read(1 << 26):
            pass
    rows = []
    _, torch_res = _run("torch", json_file, out, 1, env)
    if not args.skip_baseline:
        _, one = _run("baseline", json_file, out, 1, env)
        peak = one[0]["VmHWM"]
        fit = max(1, int(0.85 * _mem_available_mb() // peak))
        waves = [min(fit, args.ranks - i) for i in range(0, args.ranks, fit)]
        logger.info("pycocotools: 1 rank alone %.1f s, peak %.0f MB; running %d ranks in waves of %s",
                    one[0]["ready_s"], peak, args.ranks, waves)
        res, wall = [], 0.0
        for w in waves:
            wt, r = _run("baseline", json_file, out, w, env)
            wall += wt
            res += r
        note = "" if len(waves) == 1 else f" (memory: waves of {waves})"
        rows.append(("(a) pycocotools COCO(), 1 rank alone", one, one[0]["ready_s"]))
        rows.append((f"(a) pycocotools COCO(), {args.ranks} ranks together{note}", res, wall))
    wt, build = _run("build", json_file, out, 1, env)
    rows.append(("(b) cache build, once (1 process)", build, wt))
    cache_mb = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(cache) for fn in fns) / 2**20
    _, one = _run("ours", json_file, out, 1, env)
    rows.append(("(b) ours: mmap cache + sampler index, 1 rank alone", one, one[0]["ready_s"]))
    wt, res = _run("ours", json_file, out, args.ranks, env)
    rows.append((f"(b) ours: mmap cache + sampler index, {args.ranks} ranks together", res, wt))
    wt, sub = _run("subset", json_file, out, 1, env)
    rows.append(("(c) make the 1/10 subset (parse source, write json + manifest)", sub, wt))

    print(f"\nAnnotation file: {json_file}: {size_mb:.0f} MB, {one[0]['images']} images, "
          f"{one[0]['annotations']} instances; cache {cache_mb:.0f} MB; {os.cpu_count()} CPU cores; "
          f"reference: `import torch` alone peaks at {torch_res[0]['VmHWM']:.0f} MB RSS.\n")
    print("| step | wall s (all ranks) | per-rank ready s | per-rank peak RSS MB | RSS at ready MB | "
          "PSS at ready MB | private at ready MB |")
    print("|---|---|---|---|---|---|---|")
    for name, res, wall in rows:
        priv = [dict(r, Private=r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)) for r in res]
        print(f"| {name} | {wall:.1f} | {_summ_s(res)} | {_summ(res, 'VmHWM')} | {_summ(res, 'Rss')} | "
              f"{_summ(res, 'Pss')} | {_summ(priv, 'Private')} |")


if __name__ == "__main__":
    main()
