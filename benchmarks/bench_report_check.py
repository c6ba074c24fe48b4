"""The work a trial added to each report (trainables.tune_trainable._report): before reporting a
checkpoint it asks the storage for the experiment folder's file info, so that a storage outage is
waited out instead of failing the trial. Its cost, on a local folder and on a local SeaweedFS S3
server (study.stack.S3Server), measured in interleaved rounds.

    .venv/bin/python benchmarks/bench_report_check.py [--calls 300] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
from report import machine  # beside this script

from study.stack import S3Server


def median_seconds(fs: pafs.FileSystem, path: str, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fs.get_file_info(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "ray" / "study" / "run-1"
        local.mkdir(parents=True)
        server = S3Server(Path(tmp) / "s3").start()
        try:
            server.create_bucket("vamp-study")
            s3 = pafs.S3FileSystem(access_key=server.access_key, secret_key=server.secret_key,
                                   endpoint_override=server.endpoint_url, region="us-east-1")
            s3.create_dir("vamp-study/ray/study/run-1")
            variants = {"local folder": (pafs.LocalFileSystem(), str(local)),
                        "S3 (SeaweedFS, 127.0.0.1)": (s3, "vamp-study/ray/study/run-1")}
            rounds = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, (fs, path) in variants.items():
                    rounds[name].append(median_seconds(fs, path, args.calls))
        finally:
            server.remove()
    print(f"storage check per report ({machine()}; medians of {args.calls} calls, {args.rounds} rounds)")
    for name, medians in rounds.items():
        print(f"  {name}: {statistics.median(medians) * 1e3:.4f} ms (rounds: "
              f"{', '.join(f'{m * 1e3:.4f}' for m in medians)})")


if __name__ == "__main__":
    main()
