"""Synthetic CTR stream for the throughput benchmark, written for freshrank and for VW.

1,000,000 events (default) with 10 categorical fields ``f0..f9``.  Each field draws
its values from a bounded Zipf distribution over its own vocabulary (cardinalities
from 4 to 1,000,000, exponents 1.05..1.2), and each value is an 8-hex-digit token
like a Criteo categorical.  The label is Bernoulli(sigmoid(bias + sum of one hidden
weight per (field, value))): a hidden logistic model, so a linear learner over the
hashed fields can approach the Bayes logloss, which is reported as a reference.

Writes the *same* rows in the same order twice:

* ``ctr.tsv``: freshrank's ``--format tsv`` input: a header ``label\\tf0\\t...\\tf9``,
  then label-first tab-separated rows with labels 0/1;
* ``ctr.vw``: Vowpal Wabbit text: ``1 |f f0=68fd1e64 f1=...`` / ``-1 |f ...``;

plus ``ctr.meta.json`` (parameters, CTR, Bayes and constant-predictor logloss,
distinct values per field).  Fixed seed: the files are byte-identical on every run.

    python bench/gen_ctr.py                 # bench/out/ctr.{tsv,vw}
    python bench/gen_ctr.py --events 100000 --out /tmp/small
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"

# (cardinality, zipf exponent) per field f0..f9
FIELDS: list[tuple[int, float]] = [
    (4, 1.05),
    (12, 1.1),
    (50, 1.1),
    (200, 1.15),
    (1_000, 1.2),
    (5_000, 1.2),
    (20_000, 1.2),
    (100_000, 1.1),
    (300_000, 1.1),
    (1_000_000, 1.1),
]
WEIGHT_SD = 0.6  # hidden weight scale per value
BIAS = -1.4  # hidden bias: CTR around 0.25-0.3


def zipf_bounded(rng: np.random.Generator, card: int, s: float, size: int) -> np.ndarray:
    """``size`` draws of ranks 0..card-1 with P(k) proportional to 1/(k+1)^s."""
    p = 1.0 / np.arange(1, card + 1, dtype=np.float64) ** s
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), card - 1)


def tokens(rng: np.random.Generator, card: int) -> np.ndarray:
    """``card`` distinct 8-hex-digit value strings (Criteo-like), as a numpy str array."""
    ids = rng.choice(1 << 32, size=card, replace=False)
    return np.array([f"{int(v):08x}" for v in ids])


def generate(
    events: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], dict[str, object]]:
    """Labels (0/1), per-field value ranks, per-field vocabularies, and metadata."""
    rng = np.random.default_rng(seed)
    logits = np.full(events, BIAS)
    ranks: list[np.ndarray] = []
    vocab: list[np.ndarray] = []
    for card, s in FIELDS:
        r = zipf_bounded(rng, card, s, events)
        w = rng.normal(0.0, WEIGHT_SD, card)
        logits += w[r]
        ranks.append(r)
        vocab.append(tokens(rng, card))
    p = 1.0 / (1.0 + np.exp(-logits))
    labels = (rng.random(events) < p).astype(np.int8)
    ctr = float(labels.mean())
    bayes = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))
    constant = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    meta: dict[str, object] = {
        "events": events,
        "seed": seed,
        "fields": [{"cardinality": c, "zipf_s": s} for c, s in FIELDS],
        "distinct_values": [int(np.unique(r).size) for r in ranks],
        "hidden_weight_sd": WEIGHT_SD,
        "hidden_bias": BIAS,
        "ctr": round(ctr, 6),
        "bayes_logloss": round(bayes, 6),
        "constant_ctr_logloss": round(constant, 6),
    }
    return labels, ranks, vocab, meta


def write(out: Path, labels: np.ndarray, ranks: list[np.ndarray], vocab: list[np.ndarray]) -> None:
    """Both files, streamed in blocks so memory stays small."""
    names = [f"f{j}" for j in range(len(ranks))]
    block = 100_000
    with (
        (out / "ctr.tsv").open("w", encoding="ascii", newline="\n") as tsv,
        (out / "ctr.vw").open("w", encoding="ascii", newline="\n") as vw,
    ):
        tsv.write("\t".join(["label", *names]) + "\n")
        for lo in range(0, labels.size, block):
            hi = min(lo + block, labels.size)
            cols = [vocab[j][ranks[j][lo:hi]].tolist() for j in range(len(ranks))]
            ys = labels[lo:hi].tolist()
            rows = list(zip(*cols, strict=True))
            tsv.write(
                "".join(f"{y}\t" + "\t".join(row) + "\n" for y, row in zip(ys, rows, strict=True))
            )
            vw.write(
                "".join(
                    ("1 |f " if y else "-1 |f ")
                    + " ".join(f"{n}={v}" for n, v in zip(names, row, strict=True))
                    + "\n"
                    for y, row in zip(ys, rows, strict=True)
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    labels, ranks, vocab, meta = generate(args.events, args.seed)
    write(args.out, labels, ranks, vocab)
    meta["files"] = {
        "tsv": str(args.out / "ctr.tsv"),
        "vw": str(args.out / "ctr.vw"),
        "tsv_bytes": (args.out / "ctr.tsv").stat().st_size,
        "vw_bytes": (args.out / "ctr.vw").stat().st_size,
    }
    (args.out / "ctr.meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.events:,} events in {time.perf_counter() - started:.1f} s to {args.out}")
    print(
        f"  ctr {meta['ctr']:.4f}  bayes logloss {meta['bayes_logloss']:.4f}  "
        f"constant-CTR logloss {meta['constant_ctr_logloss']:.4f}"
    )
    print(f"  distinct values per field: {meta['distinct_values']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
