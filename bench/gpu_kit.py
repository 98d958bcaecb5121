"""Issue 3's GPU checks, packed for a lent GPU machine that cannot download anything.

``python -m bench.gpu_kit build`` (here, on the CPU machine) writes ``var/gpu-kit/``:

- the onnxruntime-gpu wheel for the device's Python (3.12), cut into parts that each fit one
  device call beside the working tree (the wheel is about 255 MB, a call carries 64 MiB);
- the lmdb wheel (``encoders`` imports it; the device image lacks it);
- the fp16 export of the default model (``recstream encoders export --variant fp16``);
- ``texts.json`` (the ml-100k item texts and ~128-token paragraphs of them, as
  ``recstream encoders bench`` uses) and ``reference.npy``, their fp32 vectors from this
  machine's CPU graph (cosine 1.0 to torch), for the fp16 parity check;
- ``calls.txt``: the device calls, in order.

``python -m bench.gpu_kit check OUT_DIR`` (there, after the wheels are installed) checks that
the CUDA provider and IO binding are used, measures fp16's cosine to the CPU fp32 vectors,
and measures sentences/s for short (ml-100k titles, about 15-30 tokens) and long texts at
several batch sizes, with the seconds spent in tokenisation apart. It writes
``OUT_DIR/gpu-check.json``. Issue 3's goal is 100,000 sentences/s for short texts in fp16.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["build", "check"]

KIT = Path("var/gpu-kit")
PART_BYTES = 60 << 20
#: The device's Python and platforms (its README: python3 is 3.12 on manylinux x86-64).
DEVICE_WHEEL_ARGS = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                     "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                     "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
BATCHES = (256, 1024, 4096, 16384)
SHORT_TEXTS = 65_536


def build(kit: Path = KIT) -> list[str]:
    """Write the kit (see the module doc); returns the device calls, also in ``calls.txt``."""
    from encoders.bench import bench_texts, item_texts
    from encoders.export import ensure_exported
    from encoders.runtime import OnnxTextEncoder
    from stream.config import load_settings

    shutil.rmtree(kit, ignore_errors=True)
    wheels = kit / "wheels"
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", *DEVICE_WHEEL_ARGS, "-d", str(wheels),
                    "onnxruntime-gpu", "lmdb"], check=True)
    (gpu_wheel,) = wheels.glob("onnxruntime_gpu-*.whl")
    parts = _split(gpu_wheel, kit / "parts")
    (kit / "parts" / "name").write_text(gpu_wheel.name)
    gpu_wheel.unlink()

    settings = load_settings()
    fp16 = ensure_exported(settings.encoder.model, settings.encoder.cache_dir, "fp16")
    shutil.copytree(fp16, kit / "model-fp16")
    short = item_texts(settings.encoder.cache_dir)
    long = bench_texts(settings.encoder.cache_dir, n=512)["long"]
    (kit / "texts.json").write_text(json.dumps({"short": short, "long": long}, ensure_ascii=False))
    fp32 = OnnxTextEncoder(ensure_exported(settings.encoder.model, settings.encoder.cache_dir, "fp32"), provider="cpu")
    np.save(kit / "reference.npy", fp32.encode(short + long))

    last = parts[-1].name
    calls = [f"carry [\"{kit}/parts/{p.name}\"]: mkdir -p /tmp/kit && cp {kit}/parts/{p.name} /tmp/kit/ && ls -la /tmp/kit"
             for p in parts[:-1]]
    carry = [f"{kit}/parts/{last}", f"{kit}/parts/name", f"{kit}/wheels", f"{kit}/model-fp16", f"{kit}/texts.json", f"{kit}/reference.npy"]
    calls.append(
        f"carry {json.dumps(carry)}: cat /tmp/kit/part-* {kit}/parts/{last} > /tmp/kit/$(cat {kit}/parts/name) && "
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/kit/*.whl {kit}/wheels/*.whl && "
        f"PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 -m bench.gpu_kit check $OUT")
    (kit / "calls.txt").write_text("\n".join(calls) + "\n")
    return calls


def _split(path: Path, out: Path, size: int = PART_BYTES) -> list[Path]:
    out.mkdir(parents=True)
    parts = []
    with open(path, "rb") as src:
        while chunk := src.read(size):
            part = out / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append(part)
    return parts


def check(out_dir: Path, kit: Path = KIT, provider: str = "cuda", short: int = SHORT_TEXTS, long: int = 4096,
          batches: tuple[int, ...] = BATCHES) -> dict:
    """Run the GPU checks with the kit's model and texts; writes ``gpu-check.json``.
    ``provider="cpu"`` and small counts make a dry run of the script on a CPU machine."""
    import onnxruntime as ort

    from encoders.runtime import OnnxTextEncoder

    result: dict = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
                    "python": platform.python_version()}
    if provider == "cuda":  # CUDA and cuDNN libraries: from the nvidia-* packages, else as torch loads them
        try:
            ort.preload_dlls()
            result["cuda_libraries"] = "onnxruntime.preload_dlls"
        except Exception as exc:  # an older onnxruntime, or another layout of the nvidia packages
            result["preload_dlls_error"] = repr(exc)
            import torch

            torch.cuda.init()
            result["cuda_libraries"] = f"torch {torch.__version__}"
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False)
        result["gpu"] = gpu.stdout.strip()
    texts = json.loads((kit / "texts.json").read_text())
    reference = np.load(kit / "reference.npy")
    encoder = OnnxTextEncoder(kit / "model-fp16", provider=provider, batch_size=batches[0])
    result.update(providers=encoder.providers, io_binding=encoder.io_binding, max_batch_tokens=encoder.max_batch_tokens)
    got = encoder.encode(texts["short"] + texts["long"])
    cosine = (got * reference).sum(axis=1)
    result["fp16_cosine_to_cpu_fp32"] = {"mean": round(float(cosine.mean()), 6), "min": round(float(cosine.min()), 6)}
    _write(out_dir, result)

    rows = []
    for kind, n in (("short", short), ("long", long)):
        pool = texts[kind]
        corpus = [pool[i % len(pool)] for i in range(n)]
        started = time.perf_counter()
        encoder.tokenizer.encode_batch(corpus)
        tokenise_s = time.perf_counter() - started
        for batch in batches:
            encoder.batch_size = batch
            encoder.encode(corpus[: batch * 2])  # warm-up: CUDA kernels and allocations for this shape
            best = min(_timed(encoder.encode, corpus) for _ in range(3))
            rows.append({"texts": kind, "batch_size": batch, "sentences": n, "sentences_per_s": round(n / best),
                         "seconds": round(best, 3), "tokenise_s": round(tokenise_s, 3)})
            print(json.dumps(rows[-1]), flush=True)
    result["throughput"] = rows
    result["short_best_sentences_per_s"] = max(r["sentences_per_s"] for r in rows if r["texts"] == "short")
    _write(out_dir, result)
    return result


def _timed(fn, arg) -> float:
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


def _write(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_kit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="write var/gpu-kit/ (here)")
    run = sub.add_parser("check", help="run the checks (on the GPU machine)")
    run.add_argument("out", type=Path)
    run.add_argument("--provider", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    run.add_argument("--short", type=int, default=SHORT_TEXTS, help="short texts per timing")
    run.add_argument("--long", type=int, default=4096, help="long texts per timing")
    run.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes (rows per call)")
    args = parser.parse_args()
    if args.command == "build":
        print("\n".join(build()))
    else:
        print(json.dumps(check(args.out, provider=args.provider, short=args.short, long=args.long, batches=tuple(args.batches)), indent=1))
    sys.stdout.flush()
    os._exit(0)  # onnxruntime's CUDA teardown at exit can outlast the call


if __name__ == "__main__":
    main()
