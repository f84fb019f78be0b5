"""Benchmark: `muzo-ops check-env` on a full .env against `python -c "import dotenv"`.

Both run as fresh processes, interleaved, in the same run, so the ratio holds
on a noisy machine. Prints medians and the ratio (aim: at most 1.3x).

    python bench/check_env.py --runs 40
    python bench/check_env.py --runs 3 --lines 40000   # scale: a 40k-line file (linear, not quadratic)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from envdata import FULL, write_env


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--lines", type=int, default=0,
                        help="add this many extra variables to the file (scale check)")
    args = parser.parse_args()
    # Measure muzo_ops as `pip install .` leaves it: byte-compiled. (An editable install
    # under PYTHONDONTWRITEBYTECODE=1 would recompile every module on every run.)
    import compileall

    import muzo_ops

    compileall.compile_dir(str(Path(muzo_ops.__file__).parent), quiet=1)
    with tempfile.TemporaryDirectory() as folder:
        extra = "".join(f"X{i}=v{i}\n" for i in range(args.lines))
        env = write_env(Path(folder) / ".env", FULL, extra=extra)
        ours = [sys.executable, "-m", "muzo_ops", "check-env", "--env-file", str(env)]
        base = [sys.executable, "-c", "import dotenv"]
        timed(ours), timed(base)  # warm the file cache
        a: list[float] = []
        b: list[float] = []
        for i in range(args.runs):
            print(f"\rrun {i + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
            a.append(timed(ours))
            b.append(timed(base))
        print(file=sys.stderr)
    ma, mb = statistics.median(a), statistics.median(b)
    label = f"full .env + {args.lines} lines" if args.lines else "full .env"
    print(f"check-env ({label})   median {ma * 1000:7.1f} ms")
    print(f"python -c 'import dotenv' median {mb * 1000:7.1f} ms")
    print(f"ratio check-env / import dotenv: {ma / mb:.2f}x (aim <= 1.30x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
