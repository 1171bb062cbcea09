"""Generation and serving throughput of the default-profile generator, side by side (not a test).

generation: `mrisynth.inference.rendering.render` (what `augment` runs: batches of 8 through one compiled call per model) vs a plain
            `model.predict(x, batch_size=8)`, images/s, --repeats interleaved rounds of --images masks (ratio with
            its min-max over the rounds);
serving:    the `mrisynth serve` HTTP service (in this process, on 127.0.0.1, a free port; validation,
            bounds, JSON decoded in its decode worker processes) answering one-image requests at concurrency 1 and 4, --requests per level:
            p50/p95 latency (ms) and requests/s (medians over --repeats rounds, the two levels interleaved), the
            throughput ratio c4/c1 per round with its min-max, next to the bare `Generator.predict` of one image.
The generator is the paper's U-Net (pix2pix, 4-channel label conditioning) at the default profile's
image_size, width and precision, with untrained weights: speed does not depend on the weights. (The
default profile's SPADE inpainting generator is not benchmarked here yet.)
Usage: python bench/bench_serving.py [--images 64] [--requests 40] [--repeats 3] [--json FILE]"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import numpy as np

from mrisynth.core import encoding

import common

# TensorFlow and the server are imported in main(): `serve`'s decode workers are spawned processes, which
# import this script again as their __main__ module, and must stay as light as the ones `mrisynth serve` starts


def _conditioning(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(size // 3, 2 * size // 3, 2).tolist() + [int(rng.integers(size // 12, size // 5))]
        d = np.hypot(yy - cy, xx - cx)
        labels[i][d < r * 1.6] = 2
        labels[i][d < r] = 4
        labels[i][d < r * 0.5] = 1
    brain = np.hypot(yy - size / 2, xx - size / 2) < size * 0.42
    return encoding.conditioning(labels, np.broadcast_to(brain, labels.shape))


def _load(port: int, body: bytes, requests: int, concurrency: int) -> dict:
    def one(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start = time.perf_counter()
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        return time.perf_counter() - start

    one(0)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {"p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))], 1),
            "requests_per_s": round(requests / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json", help="write the figures here (make bench)")
    args = parser.parse_args()
    import keras

    from mrisynth.config import load_params
    from mrisynth.core import models
    from mrisynth.inference import rendering
    from mrisynth.inference.server import DECODE_WORKERS, Service, freeze_heap
    from mrisynth.inference.served_model import Generator, export_model
    from mrisynth.io import devices

    params = load_params(args.params)
    size, gan = params.preprocess.image_size, params.train_gan
    precision = devices.resolve_precision(gan.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    generator = models.build_generator(size, encoding.CONDITION_CHANNELS, 4, gan.dropout, gan.width)
    cond = _conditioning(args.images, size)

    generation = common.interleaved(lambda: rendering.render(generator, cond, batch_size=8),
                                    lambda: generator.predict(cond, batch_size=8, verbose=0), args.repeats, args.images)
    ours, plain = generation["ours_per_s"], generation["reference_per_s"]
    print(f"generation at {size}px, width {gan.width}, {precision}: render {ours:.1f} images/s vs model.predict {plain:.1f} images/s "
          f"= {common.spread(generation)}")

    served = Generator(export_model(generator), "bench")
    one = cond[:1]
    direct = common.median_rate(10, common.timings(lambda: [served.predict(one) for _ in range(10)], args.repeats))
    service = Service(served, decode_workers=DECODE_WORKERS)  # as `mrisynth serve` starts it
    freeze_heap()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), service.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    body = json.dumps({"inputs": one.tolist()}).encode()
    try:  # concurrency 1 and 4 interleaved, order alternating per round: c4/c1 throughput per round
        rounds = {1: [], 4: []}
        for round_ in range(args.repeats):
            for c in ((1, 4) if round_ % 2 == 0 else (4, 1)):
                rounds[c].append(_load(httpd.server_address[1], body, args.requests, c))
        levels = {c: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]} for c, runs in rounds.items()}
        ratios = [b["requests_per_s"] / a["requests_per_s"] for a, b in zip(rounds[1], rounds[4])]
        scaling = {"ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
                   "rounds": args.repeats, "crosses_1": min(ratios) < 1.0 < max(ratios)}
    finally:
        httpd.shutdown()
        httpd.server_close()
        service.close()
    for c, r in levels.items():
        print(f"serving, one {size}px image per request, concurrency {c}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
              f"{r['requests_per_s']} requests/s ({args.requests} requests)")
    print(f"throughput at concurrency 4 / concurrency 1: {common.spread(scaling)}")
    print(f"bare Generator.predict of one image: {direct:.1f} images/s ({1000 / direct:.1f} ms)")
    common.write(args.json, {
        "what": "generation (augment's render) and the served generator", "size": size, "width": gan.width, "precision": precision,
        "repeats": args.repeats, "generation_images": args.images, "generation_batch": 8,
        "generation_images_per_s": round(ours, 2), "reference_predict_images_per_s": round(plain, 2),
        **common.ratio_keys("generation_ratio", generation), **common.ratio_keys("serving_c4_c1_ratio", scaling),
        "serving_requests": args.requests, "serving_payload_bytes": len(body), "serving_decode_workers": DECODE_WORKERS,
        **{f"serving_c{c}_{k}": v for c, r in levels.items() for k, v in r.items()},
        "direct_predict_ms": round(1000 / direct, 1),
        "serving_overhead_ratio_c1": round(levels[1]["p50_ms"] / (1000 / direct), 3)})


if __name__ == "__main__":
    main()
