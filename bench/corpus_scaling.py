"""How the corpus and tokenize stages, and pretraining, scale with the corpus: synthetic
corpora of 10 MB, 100 MB and 1 GB of distinct text, time per MB and peak memory.

    python bench/corpus_scaling.py                  # 10, 100 and 1000 MB; prints a markdown table
    python bench/corpus_scaling.py --sizes 10 100   # a quicker look

One scratch project holds the default dataset (ingested and validated once: its validation
and test text is what the corpus stage keeps out) and, per size, one synthetic text source
(`corpus.train_text` off, so the source is the whole corpus). Each stage runs as its own
process, `python -m tasks.<stage>`, as DVC runs it: corpus, tokenize, then pretraining for 50
steps. Peak memory is the largest resident set of the stage's process tree (the stage and
its worker processes, summed), sampled every 50 ms. The synthetic text is Zipf-distributed
pseudo-words, 8-40 to a line, so the tokenizer and the de-duplication see text-like input;
every line is distinct.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.lib import catalog, params_file  # noqa: E402
from tasks.lib.common import read_json  # noqa: E402

STAGES = ("corpus", "tokenize", "pretrain")
FLAT = 1.2  # peak memory from 100 MB to 1 GB may grow by at most this factor


def synthetic_corpus(path: Path, megabytes: int, seed: int = 0) -> int:
    """Write about `megabytes` MB of distinct text lines; returns the line count."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "de", "ba", "po", "ri", "an", "el", "or", "us"]
    words = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 4))) + str(i % 7) for i in range(20_000)])
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    target, written, lines = megabytes * 1_000_000, 0, 0
    with path.open("w") as f:
        while written < target:
            n = 5_000
            lengths = rng.integers(8, 41, size=n)
            ids = rng.choice(len(words), size=int(lengths.sum()), p=weights)
            cuts = np.cumsum(lengths)[:-1]
            # The line number as a word: every line distinct, however the words fall.
            chunk = "".join(f"line{lines + i} " + " ".join(ws) + "\n"
                            for i, ws in enumerate(np.split(words[ids], cuts)))  # fmt: skip
            f.write(chunk)
            written += len(chunk)
            lines += n
    return lines


def run_measured(stage: str, cwd: Path, env: dict) -> tuple[float, float, float]:
    """(wall seconds, peak resident MB, peak anonymous MB) of `python -m tasks.<stage>`'s
    process tree. Resident includes file pages mapped in (the memory-mapped token files);
    anonymous is what the processes allocated themselves."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", f"tasks.{stage}"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    root, peak, peak_anon = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            info = [p.memory_info() for p in [root, *root.children(recursive=True)]]
            peak = max(peak, sum(m.rss for m in info))
            peak_anon = max(peak_anon, sum(m.rss - m.shared for m in info))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"tasks.{stage} failed:\n{proc.stderr.read()[-3000:]}")
    return time.perf_counter() - start, peak / 2**20, peak_anon / 2**20


def write_params(project: Path, source: Path | None) -> None:
    raw = params_file.read(ROOT / catalog.PARAMS)
    raw["corpus"].update(train_text=source is None, sources=[{"path": str(source)}] if source else [])
    raw["pretrain"].update(max_steps=50, warmup_steps=5, log_every=10, checkpoint_every=1000)
    params_file.write(raw, project / catalog.PARAMS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000], help="corpus sizes in MB")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        env.pop("PIPELINE_PARENT_RUN_ID", None)
        write_params(project, None)
        for stage in ("ingest", "validate"):
            subprocess.run(
                [sys.executable, "-m", f"tasks.{stage}"], cwd=project, env=env, check=True, capture_output=True
            )
        for mb in args.sizes:
            source = project / f"synthetic_{mb}mb.txt"
            start = time.perf_counter()
            lines = synthetic_corpus(source, mb)
            print(f"{mb} MB: {lines:,} lines written in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            write_params(project, source)
            row = {"mb": source.stat().st_size / 1e6, "lines": lines}
            for stage in STAGES:
                row[stage] = run_measured(stage, project, env)
                print(f"  {stage}: {row[stage][0]:.1f} s, peak {row[stage][1]:.0f} MB "
                      f"({row[stage][2]:.0f} MB anonymous)", file=sys.stderr)  # fmt: skip
            row["tokens"] = read_json(project / catalog.TOKEN_STATS)["corpus_tokens"]
            row["texts"] = read_json(project / catalog.CORPUS_STATS)["documents"]
            rows.append(row)
            source.unlink()
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """Seconds, seconds per MB and peak resident MB (anonymous in brackets) per stage."""
    out = ["| corpus MB | texts kept | tokens | corpus s | s/MB | peak MB | tokenize s | s/MB | peak MB "
           "| pretrain (50 steps) s | peak MB |", "|" + "---|" * 11]  # fmt: skip
    for r in rows:
        c, t, p = r["corpus"], r["tokenize"], r["pretrain"]
        out.append(f"| {r['mb']:,.0f} | {r['texts']:,} | {r['tokens']:,} | {c[0]:.1f} | {c[0] / r['mb']:.2f} | {c[1]:,.0f} ({c[2]:,.0f}) "
                   f"| {t[0]:.1f} | {t[0] / r['mb']:.2f} | {t[1]:,.0f} ({t[2]:,.0f}) | {p[0]:.1f} | {p[1]:,.0f} ({p[2]:,.0f}) |")  # fmt: skip
    by_size = {round(r["mb"], -1): r for r in rows}
    small, large = by_size.get(100), by_size.get(1000)
    if small and large:
        out.append("")
        for stage in STAGES:
            ratio = large[stage][1] / small[stage][1]
            verdict = "flat" if ratio <= FLAT else f"**not flat** (limit {FLAT:.2f})"
            out.append(f"- {stage}: peak memory at 1 GB / at 100 MB = {ratio:.2f}: {verdict}")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
