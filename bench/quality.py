"""Quality vs peers: freshrank and other online learners on the same data, same protocol.

* **Recommendation sets**: ML-100K (``../shared/data/ml-100k``, ``--format
  movielens``), MovieTweetings 100K (``movietweetings-100k``, ``--format
  movietweetings``) and Amazon Grocery as prepared by ReChorus
  (``amazon-grocery-rechorus``, ``--format rechorus``), one table each, under the
  recommendation replay protocol (see ``bench/protocol.py``): HR@10 and NDCG@10 of
  every 20th interaction after the first 20 %, ranked against all known items minus
  the user's seen ones, before it is learned.  freshrank runs as the real system
  (``runtime.System`` + ``runtime.replay``, the code ``freshrank replay`` runs; a
  ``python -m runtime replay`` subprocess of this checkout checks the number); the
  peers go through ``protocol.run_ranking`` together, in lockstep (same events, same
  negatives).  Peers: global and time-decayed popularity; the recency-aware peers of
  issue 10 (cosine item-kNN with recency weights, decayed Markov chain, their blend,
  EASE and iALS refitted every N events; ``--quick`` leaves out the refitted two);
  Vowpal Wabbit settings and River FunkMF.  River LogisticRegression + FTRLProximal
  and rtrec SLIM are too slow for a whole set in the time budget (River scores every
  candidate one dict at a time; rtrec refits over all interactions), so a second
  ML-100K table runs every system, freshrank included, on the first
  ``--capped-rows`` (20,000) ratings.  A last table gives, per set, freshrank's
  HR@10 over the best peer's.
* **Criteo sample** (``../shared/data/criteo-sample``): train, dev, test rows in that
  order; progressive (predict, then learn) logloss and AUC for freshrank (``freshrank
  replay --format criteo``'s reader and pipeline over the three files) with its
  config's learner (FTRL by default) and with plain SGD (``[optimizer] kind = "sgd"``,
  ``FRESHRANK_SGD_SETTINGS``; ``--skip sgd`` leaves them out), VW settings, River
  LR-FTRL and the running-mean CTR.

Targets (issue 4): HR@10 ≥ 1.2 × the best peer; Criteo logloss ≤ the best VW setting.
Writes ``bench/out/quality.json``.  freshrank's config is its defaults plus
``--freshrank-set SECTION.KEY=VALUE``.

    python bench/quality.py                                   # everything (long)
    python bench/quality.py --recommendation --skip vw river funkmf rtrec   # ~25 min here
    python bench/quality.py --recommendation --quick --skip vw river funkmf rtrec
    python bench/quality.py --only criteo                     # ~1 min
    python bench/quality.py --freshrank-set model.factors=8 --freshrank-set ftrl.alpha=0.05
    python bench/quality.py --only ml100k --ml-rows 30000 --capped-rows 0   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchutil import machine  # noqa: E402
from bench.peers import (  # noqa: E402
    BlendPeer,
    DecayedPopularityPeer,
    EASEFits,
    EASEPeer,
    FunkMFPeer,
    IALSPeer,
    ItemKNNPeer,
    MarkovChainPeer,
    MeanCTRPeer,
    PopularityPeer,
    PopularityTieBreakPeer,
    RiverLRCTRPeer,
    RiverLRRankingPeer,
    RtrecSLIMPeer,
    VWCTRPeer,
    VWRankingPeer,
    vw_crosses,
)
from bench.protocol import (  # noqa: E402
    CTRPeer,
    CTRResult,
    RankingPeer,
    RankingResult,
    RankingStream,
    load_criteo,
    load_movielens,
    load_movietweetings,
    load_rechorus,
    ratio,
    run_ctr,
    run_ranking,
)
from runtime.config import Config, ConfigError  # noqa: E402
from runtime.replay import clean, open_log, replay  # noqa: E402
from runtime.system import System  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_JSON = ROOT / "bench" / "out" / "quality.json"
CRITEO_FILES = ("train.csv", "dev.csv", "test.csv")
PEER_GROUPS = (
    "popularity",
    "knn",
    "markov",
    "blend",
    "ease",
    "ials",
    "vw",
    "river",
    "funkmf",
    "rtrec",
    "sgd",
)
# refit a whole model every N events: minutes per data set, left out by --quick
HEAVY_GROUPS = ("ease", "ials")
# too slow for all 100,000 ML-100K ratings in the time budget: run on the capped table only
SLOW_GROUPS = ("river", "rtrec")
DEFAULT_CAPPED_ROWS = 20_000
HALF_LIVES_DAYS = (1.0, 7.0, 30.0)


class RecommendationSet:
    """A recommendation data set: its folder, ``freshrank replay`` format and peer stream."""

    def __init__(self, title: str, folder: str, fmt: str, first_file: str, load: Any) -> None:
        self.title, self.folder, self.fmt, self.first_file = title, folder, fmt, first_file
        self.load = load


RECOMMENDATION_SETS = {
    "ml100k": RecommendationSet("ML-100K", "ml-100k", "movielens", "u.data", load_movielens),
    "movietweetings": RecommendationSet(
        "MovieTweetings 100K",
        "movietweetings-100k",
        "movietweetings",
        "ratings.dat",
        load_movietweetings,
    ),
    "rechorus": RecommendationSet(
        "Amazon Grocery (ReChorus)",
        "amazon-grocery-rechorus",
        "rechorus",
        "train.csv",
        load_rechorus,
    ),
}
DATA_SETS = (*RECOMMENDATION_SETS, "criteo")
KNN_HALF_LIVES = (None, 3.0, 10.0)  # events; None: plain item-kNN
MARKOV_SETTINGS = ((3, 0.5), (5, 0.7), (10, 0.8))  # (previous items, decay)
BLEND_SETTINGS = (((5, 0.7), 10.0), ((10, 0.8), 3.0))  # (Markov, kNN half-life)
# (λ, refit every N events, user-row recency half-life in events or None)
EASE_SETTINGS = ((1000.0, 1000, None), (1000.0, 1000, 10.0), (300.0, 1000, 10.0))
IALS_SETTINGS = ((64, 5000, 0.01), (64, 5000, 10.0))  # (factors, refit every N, L2)

VW_BASE = ["--loss_function", "logistic", "-b", "22"]
VW_FTRL_MATCHED = "--ftrl --ftrl_alpha 0.1 --ftrl_beta 1 --l1 0 --l2 0"
# name → extra VW arguments; "{crosses}" stands for freshrank's model.crosses as -q pairs
VW_ML_SETTINGS = {
    "VW default learner, freshrank's crosses": "{crosses}",
    "VW default learner, crosses + user×item": "{crosses} -q ui",
    "VW --ftrl (VW's α 0.005, β 0.1), crosses": "--ftrl {crosses}",
    "VW --ftrl α 0.1 β 1 (freshrank's), crosses": VW_FTRL_MATCHED + " {crosses}",
    "VW default learner, crosses + --lrq ui8": "{crosses} --lrq ui8",
}
# freshrank's plain-SGD learners (``[optimizer]``) next to its default FTRL on the CTR sets
FRESHRANK_SGD_SETTINGS = {
    "freshrank SGD adagrad η 0.05": {"kind": "sgd", "rate": "adagrad", "eta": 0.05},
    "freshrank SGD adagrad η 0.1": {"kind": "sgd", "rate": "adagrad", "eta": 0.1},
    "freshrank SGD invsqrt η 0.005": {"kind": "sgd", "rate": "invsqrt", "eta": 0.005},
    "freshrank SGD constant η 0.003": {"kind": "sgd", "rate": "constant", "eta": 0.003},
}
VW_CRITEO_SETTINGS = {
    "VW default learner (-l 0.5)": "",
    "VW default learner, -l 0.1": "-l 0.1",
    "VW default learner, -l 0.05": "-l 0.05",
    "VW --ftrl (VW's α 0.005, β 0.1)": "--ftrl",
    "VW --ftrl α 0.1 β 1 (freshrank's)": VW_FTRL_MATCHED,
    "VW --ftrl α 0.05 β 1, L2 1": "--ftrl --ftrl_alpha 0.05 --ftrl_beta 1 --l2 1",
}
RIVER_FTRL_DEFAULT = {"alpha": 0.05, "beta": 1.0, "l1": 0.0, "l2": 1.0}


# ----------------------------------------------------------------------------- freshrank


def parse_overrides(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs as a config dict; values are TOML (strings may be bare)."""
    overrides: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise SystemExit(f"--freshrank-set wants section.key=value, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        overrides.setdefault(section, {})[name] = value
    return overrides


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """A config dict (sections of scalars and lists) as TOML."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def freshrank_settings(overrides: dict[str, dict[str, Any]], state_dir: str) -> dict[str, Any]:
    """The replay config: the overrides, no snapshot restore, dead letters in a temp dir."""
    settings = {section: dict(values) for section, values in overrides.items()}
    settings.setdefault("state", {})["restore"] = False
    settings.setdefault("ingest", {})["dead_letter_path"] = str(Path(state_dir) / "dead.jsonl")
    return settings


async def _replay(config: Config, chunks: Iterator[Any]) -> dict[str, Any]:
    async with System(config) as system:
        return await replay(system, chunks)


def freshrank_in_process(config: Config, paths: Sequence[Path], fmt: str) -> dict[str, Any]:
    """What ``freshrank replay`` does (cli._replay), over one or more logs in order."""
    chunks = chain.from_iterable(open_log(p, fmt, config.training.batch_size) for p in paths)
    started = time.perf_counter()
    result = asyncio.run(_replay(config, chunks))
    result["wall_seconds"] = round(time.perf_counter() - started, 3)
    settings = config.to_dict()
    result["config"] = {key: settings[key] for key in ("model", "ftrl", "optimizer", "training")}
    return result


def freshrank_cli(path: Path, fmt: str, settings: dict[str, Any], tmp: str) -> dict[str, Any]:
    """``freshrank replay`` (``python -m runtime``) as a subprocess, with the same config."""
    config_path = Path(tmp) / "freshrank.toml"
    config_path.write_text(to_toml(settings), encoding="utf-8")
    out = Path(tmp) / "replay.json"
    # this checkout's code: the venv's `freshrank` script may point at another work tree
    command = [sys.executable, "-m", "runtime", "replay", str(path), "--format", fmt]
    command += ["--no-progress", "--config", str(config_path), "--json", str(out)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=tmp, env=env)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    result["command"] = " ".join(command)
    return result


# ----------------------------------------------------------------------------- recommendation


def truncated_movielens(folder: Path, rows: int, tmp: str) -> Path:
    """A folder whose u.data holds the first ``rows`` ratings in replay order (temp, not the repo)."""
    import numpy as np

    data = np.loadtxt(folder / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    data = data[np.argsort(data[:, 3], kind="stable")][:rows]
    target = Path(tmp) / "ml-100k"
    target.mkdir()
    np.savetxt(target / "u.data", data, fmt="%d", delimiter="\t")
    for name in ("u.item", "u.user"):
        if (folder / name).exists():
            os.symlink(folder / name, target / name)
    return target


def ranking_peers(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    config: Config,
    stream: RankingStream,
    groups: set[str],
) -> list[RankingPeer]:
    items, profiles = stream.items, stream.profiles
    crosses = config.model.crosses
    n = len(items)
    peers: list[RankingPeer] = []
    if "popularity" in groups:
        peers.append(PopularityPeer(n))
        peers += [DecayedPopularityPeer(n, d * 86400.0) for d in HALF_LIVES_DAYS]
    peers += sequence_peers(n, groups)
    if "vw" in groups:
        settings = args.vw_ml or list(VW_ML_SETTINGS.values())
        names = list(VW_ML_SETTINGS) if not args.vw_ml else [f"VW {s}" for s in args.vw_ml]
        for name, extra in zip(names, settings, strict=True):
            vw_args = VW_BASE + extra.replace("{crosses}", " ".join(vw_crosses(crosses))).split()
            peer = VWRankingPeer(name, vw_args, items, profiles)
            stack.callback(peer.close)
            peers.append(peer)
    if "river" in groups:
        matched = {"alpha": config.ftrl.alpha, "beta": config.ftrl.beta}
        matched |= {"l1": config.ftrl.l1, "l2": config.ftrl.l2}
        # one setting: River's own defaults did worse on Criteo and cost another ~50 s here
        name = "River LR + FTRLProximal (freshrank's α β L1 L2), crosses"
        peers.append(RiverLRRankingPeer(name, matched, items, profiles, crosses))
    if "funkmf" in groups:
        peers.append(FunkMFPeer("River FunkMF, 10 factors, SGD 0.05", items, 10, 0.05, 0.0))
    if "rtrec" in groups:
        peers.append(RtrecSLIMPeer("rtrec SLIM (defaults), incremental fit", items))
    return peers


def sequence_peers(n_items: int, groups: set[str]) -> list[RankingPeer]:
    """The recency-aware peers of issue 10 (item-kNN, Markov chain, their blend, EASE, iALS)."""
    peers: list[RankingPeer] = []
    if "knn" in groups:
        peers += [ItemKNNPeer(n_items, h) for h in KNN_HALF_LIVES]
    if "markov" in groups:
        peers += [MarkovChainPeer(n_items, order, decay) for order, decay in MARKOV_SETTINGS]
    if "blend" in groups:
        peers += [
            BlendPeer(MarkovChainPeer(n_items, order, decay), ItemKNNPeer(n_items, h))
            for (order, decay), h in BLEND_SETTINGS
        ]
    if "markov" in groups and "popularity" in groups:
        # cold users score 0 everywhere: how much a popularity fallback adds on sparse sets
        (order, decay), h = BLEND_SETTINGS[0]
        peers += [
            PopularityTieBreakPeer(MarkovChainPeer(n_items, order, decay), n_items),
            PopularityTieBreakPeer(
                BlendPeer(MarkovChainPeer(n_items, order, decay), ItemKNNPeer(n_items, h)),
                n_items,
            ),
        ]
    if "ease" in groups:
        fits = EASEFits()
        peers += [EASEPeer(n_items, lam, every, h, fits) for lam, every, h in EASE_SETTINGS]
    if "ials" in groups:
        peers += [IALSPeer(n_items, f, every, l2) for f, every, l2 in IALS_SETTINGS]
    return peers


def run_recommendation(
    args: argparse.Namespace,
    overrides: dict[str, dict[str, Any]],
    data_set: RecommendationSet,
    rows: int | None,
    groups: set[str],
) -> dict[str, Any]:
    """freshrank and the peer ``groups`` on one recommendation set (first ``rows`` of ML-100K)."""
    folder = args.data / data_set.folder
    if not (folder / data_set.first_file).exists():
        print(f"{data_set.title}: skipped, {folder / data_set.first_file} does not exist")
        return {"skipped": f"{folder / data_set.first_file} does not exist"}
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        source = folder if rows is None else truncated_movielens(folder, rows, tmp)
        settings = freshrank_settings(overrides, tmp)
        config = Config.from_dict(settings)
        print(f"\n{data_set.title} ({source}): freshrank replay ...", flush=True)
        fresh = freshrank_in_process(config, [source], data_set.fmt)
        cli = None if args.no_cli_check else freshrank_cli(source, data_set.fmt, settings, tmp)
        stream = data_set.load(source)
        with contextlib.ExitStack() as stack:
            peers = ranking_peers(stack, args, config, stream, groups)
            print(f"  {len(peers)} peers through the shared driver ...", flush=True)
            started = time.perf_counter()
            results = run_ranking(
                stream,
                peers,
                k=config.training.rank_k,
                negatives=config.training.negatives,
                seed=config.model.seed,
                exclude_seen=config.training.exclude_seen,
                progress=_progress(len(stream), started),
            )
    return ranking_report(data_set.title, fresh, cli, results, len(stream))


def _progress(total: int, started: float) -> Any:
    step = max(total // 10, 1)

    def report(i: int) -> None:
        if (i + 1) % step == 0:
            print(
                f"    {i + 1:,}/{total:,} events, {time.perf_counter() - started:.0f} s", flush=True
            )

    return report


def ranking_report(
    title: str,
    fresh: dict[str, Any],
    cli: dict[str, Any] | None,
    results: list[RankingResult],
    events: int,
) -> dict[str, Any]:
    hr, ndcg = fresh.get("hr@10", math.nan), fresh.get("ndcg@10", math.nan)
    checks: dict[str, Any] = {}
    if cli is not None:
        checks["cli_hr@10"] = cli.get("hr@10")
        checks["cli_equal"] = cli.get("hr@10") == hr and cli.get("ndcg@10") == ndcg
    popularity = next((r for r in results if r.name == "global popularity"), None)
    if popularity is not None:
        checks["driver_popularity_hr@10"] = popularity.hr
        checks["freshrank_popularity_hr@10"] = fresh.get("baseline_popularity_hr@10")
        checks["popularity_equal"] = popularity.hr == fresh.get("baseline_popularity_hr@10")
        checks["evaluated_equal"] = popularity.evaluated == fresh.get("rank_evaluated")
    best = max(results, key=lambda r: r.hr, default=None)
    verdict = ratio(hr, best.hr) if best else math.nan
    rows = [("freshrank", hr, ndcg, fresh.get("rank_evaluated"), fresh["wall_seconds"])]
    rows += [(r.name, r.hr, r.ndcg, r.evaluated, r.seconds) for r in results]
    width = max([62, *(len(r.name) for r in results)])
    print(f"\n{title}: {events:,} interactions, HR@10 / NDCG@10 of the evaluated ones")
    print(f"{'system':<{width}} {'HR@10':>7} {'NDCG@10':>8} {'evaluated':>9} {'s':>7} {'fr ÷':>6}")
    for name, h, n, count, seconds in rows:
        print(
            f"{name:<{width}} {h:>7.4f} {n:>8.4f} {count!s:>9} {seconds:>7.1f} {ratio(hr, h):>6.2f}"
        )
    if best is not None:
        met = "MET" if verdict >= 1.2 else "MISSED"
        print(f"best peer: {best.name} ({best.hr:.4f}); freshrank ÷ best = {verdict:.3f}")
        print(f"target HR@10 ≥ 1.2 × best peer: {met}")
    print(f"checks: {checks}")
    return {
        "events": events,
        "freshrank": fresh,
        "freshrank_cli": cli,
        "peers": [vars(r) for r in results],
        "best_peer": best.name if best else None,
        "freshrank_over_best_peer": verdict,
        "target": "hr@10 >= 1.2 x best peer",
        "target_met": bool(verdict >= 1.2),
        "checks": checks,
    }


# ----------------------------------------------------------------------------- Criteo


def ctr_peers(
    stack: contextlib.ExitStack, args: argparse.Namespace, config: Config
) -> list[CTRPeer]:
    peers: list[CTRPeer] = [MeanCTRPeer()]
    if "vw" not in args.skip:
        settings = args.vw_criteo or list(VW_CRITEO_SETTINGS.values())
        names = list(VW_CRITEO_SETTINGS) if not args.vw_criteo else [f"VW {s}" for s in settings]
        for name, extra in zip(names, settings, strict=True):
            peer = VWCTRPeer(name, VW_BASE + extra.split())
            stack.callback(peer.close)
            peers.append(peer)
    if "river" not in args.skip:
        matched = {"alpha": config.ftrl.alpha, "beta": config.ftrl.beta}
        matched |= {"l1": config.ftrl.l1, "l2": config.ftrl.l2}
        peers.append(RiverLRCTRPeer("River LR + FTRLProximal (freshrank's α β L1 L2)", matched))
        peers.append(
            RiverLRCTRPeer("River LR + FTRLProximal (River's defaults)", RIVER_FTRL_DEFAULT)
        )
    return peers


def run_criteo(args: argparse.Namespace, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    folder = args.data / "criteo-sample"
    paths = [folder / name for name in CRITEO_FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"Criteo: skipped, missing {', '.join(missing)}")
        return {"skipped": f"missing {', '.join(missing)}"}
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        config = Config.from_dict(freshrank_settings(overrides, tmp))
        print(f"Criteo ({folder}, {' + '.join(CRITEO_FILES)}): freshrank replay ...", flush=True)
        fresh = freshrank_in_process(config, paths, "criteo")
        fresh["name"] = f"freshrank ({config.optimizer.kind.upper()}, the config's learner)"
        learners = []
        for name, optimizer in FRESHRANK_SGD_SETTINGS.items() if "sgd" not in args.skip else ():
            settings = freshrank_settings(overrides | {"optimizer": optimizer}, tmp)
            print(f"Criteo: {name} ...", flush=True)
            result = freshrank_in_process(Config.from_dict(settings), paths, "criteo")
            learners.append({**result, "name": name})
    rows = load_criteo(paths)
    with contextlib.ExitStack() as stack:
        results = run_ctr(rows, ctr_peers(stack, args, config))
    return ctr_report(fresh, results, len(rows), learners)


def ctr_report(
    fresh: dict[str, Any],
    results: list[CTRResult],
    n: int,
    sgd: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The table and JSON of a CTR set: freshrank with its config's learner, freshrank's
    SGD settings (``sgd``) and the peers, by progressive logloss and AUC."""
    logloss = fresh.get("logloss", math.nan)
    mean_ctr = next((r for r in results if r.name == "running-mean CTR"), None)
    checks: dict[str, Any] = {}
    if mean_ctr is not None:
        checks["driver_mean_ctr_logloss"] = mean_ctr.logloss
        checks["freshrank_mean_ctr_logloss"] = fresh.get("baseline_mean_ctr_logloss")
        checks["mean_ctr_equal"] = math.isclose(
            mean_ctr.logloss, fresh.get("baseline_mean_ctr_logloss", math.nan), rel_tol=1e-9
        )
        checks["rows_equal"] = fresh.get("labelled") == n
    vw = [r for r in results if r.name.startswith("VW")]
    best_vw = min(vw, key=lambda r: r.logloss, default=None)
    best = min(results, key=lambda r: r.logloss, default=None)
    verdict = ratio(logloss, best_vw.logloss) if best_vw else math.nan
    print(f"\nCriteo sample: {n:,} rows (train, dev, test), progressive logloss and AUC")
    print(f"{'system':<52} {'logloss':>8} {'AUC':>7} {'s':>6} {'fr ÷':>6}")
    fresh_name = fresh.get("name", "freshrank")
    table = [(fresh_name, logloss, fresh.get("auc", math.nan), fresh["wall_seconds"])]
    table += [(s["name"], s.get("logloss", math.nan), s.get("auc", math.nan), s["wall_seconds"])
              for s in sgd]  # fmt: skip
    table += [(r.name, r.logloss, r.auc, r.seconds) for r in results]
    for name, loss, auc, seconds in table:
        print(f"{name:<52} {loss:>8.5f} {auc:>7.4f} {seconds:>6.1f} {ratio(logloss, loss):>6.3f}")
    if best_vw is not None:
        met = "MET" if verdict <= 1.0 else "MISSED"
        print(
            f"best VW: {best_vw.name} ({best_vw.logloss:.5f}); freshrank ÷ best VW = {verdict:.4f}"
        )
        print(f"target logloss ≤ best VW setting: {met}")
    if best is not None:
        print(f"best peer overall: {best.name} ({best.logloss:.5f})")
    best_sgd = min(sgd, key=lambda s: s.get("logloss", math.inf), default=None)
    if best_sgd is not None:
        print(
            f"best freshrank SGD: {best_sgd['name']} ({best_sgd['logloss']:.5f}) vs {fresh_name}"
            f" ({logloss:.5f})"
        )
    print(f"checks: {checks}")
    return {
        "rows": n,
        "freshrank": fresh,
        "freshrank_sgd": list(sgd),
        "best_freshrank_sgd": best_sgd["name"] if best_sgd else None,
        "sgd_beats_config_learner": bool(best_sgd and best_sgd["logloss"] < logloss),
        "peers": [vars(r) for r in results],
        "best_vw": best_vw.name if best_vw else None,
        "freshrank_over_best_vw": verdict,
        "best_peer": best.name if best else None,
        "target": "logloss <= best VW setting",
        "target_met": bool(verdict <= 1.0),
        "checks": checks,
    }


# ----------------------------------------------------------------------------- main


def print_summary(out: dict[str, Any]) -> None:
    """One line per recommendation set: freshrank, the best peer, and their ratio."""
    done = [(RECOMMENDATION_SETS[k].title, out[k]) for k in RECOMMENDATION_SETS if k in out]
    done = [(title, report) for title, report in done if "peers" in report]
    if not done:
        return
    print(
        f"\n{'data set':<28} {'freshrank':>9} {'best peer HR@10':>15}  {'fr ÷ best':>9}  best peer"
    )
    for title, report in done:
        best = max(report["peers"], key=lambda r: r["hr"], default=None)
        fresh_hr = report["freshrank"].get("hr@10", math.nan)
        best_hr = best["hr"] if best else math.nan
        best_name = best["name"] if best else "-"
        print(
            f"{title:<28} {fresh_hr:>9.4f} {best_hr:>15.4f}  {ratio(fresh_hr, best_hr):>9.3f}"
            f"  {best_name}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the data sets")
    parser.add_argument(
        "--only", choices=DATA_SETS, action="append", help="data sets (default: all four)"
    )
    parser.add_argument(
        "--recommendation",
        action="store_true",
        help=f"the recommendation sets only ({', '.join(RECOMMENDATION_SETS)}), same as --only each",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"skip the refitted peers ({', '.join(HEAVY_GROUPS)})"
    )
    parser.add_argument(
        "--freshrank-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a freshrank config key (TOML value), e.g. model.factors=8",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=PEER_GROUPS, help="peer groups")
    parser.add_argument(
        "--ml-rows", type=int, help="only the first N ML-100K ratings (all systems)"
    )
    parser.add_argument(
        "--capped-rows",
        type=int,
        default=DEFAULT_CAPPED_ROWS,
        help="a second ML-100K table on the first N ratings with every system, the slow peers "
        f"({', '.join(SLOW_GROUPS)}) included (0: none)",
    )
    parser.add_argument(
        "--slow-full", action="store_true", help="run the slow peers on the full ML-100K table too"
    )
    parser.add_argument(
        "--vw-ml",
        action="append",
        metavar="ARGS",
        help="VW settings for ML-100K instead of the defaults",
    )
    parser.add_argument(
        "--vw-criteo",
        action="append",
        metavar="ARGS",
        help="VW settings for Criteo instead of the defaults",
    )
    parser.add_argument(
        "--no-cli-check", action="store_true", help="skip the `freshrank replay` subprocess check"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="result file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = parse_overrides(args.freshrank_set)
    try:  # a typo in an override must fail before minutes of peers run
        Config.from_dict(freshrank_settings(overrides, tempfile.gettempdir()))
    except ConfigError as error:
        print(f"quality.py: freshrank config error: {error}", file=sys.stderr)
        return 2
    only = set(args.only or ()) | (set(RECOMMENDATION_SETS) if args.recommendation else set())
    only = only or set(DATA_SETS)
    started = time.perf_counter()
    out: dict[str, Any] = {
        "command": " ".join(["python bench/quality.py", *(argv or sys.argv[1:])])
    }
    out["freshrank_overrides"] = overrides
    if "criteo" in only:
        out["criteo"] = run_criteo(args, overrides)
    groups = set(PEER_GROUPS) - set(args.skip) - (set(HEAVY_GROUPS) if args.quick else set())
    full_groups = groups if args.slow_full else groups - set(SLOW_GROUPS)
    for key, data_set in RECOMMENDATION_SETS.items():
        if key not in only:
            continue
        rows = args.ml_rows if key == "ml100k" else None
        out[key] = run_recommendation(args, overrides, data_set, rows, full_groups)
        if (
            key == "ml100k"
            and args.capped_rows
            and groups & set(SLOW_GROUPS)
            and not args.slow_full
        ):
            out["ml100k_capped"] = run_recommendation(
                args, overrides, data_set, args.capped_rows, groups
            )
    print_summary(out)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["machine"] = machine()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(clean(out), indent=2) + "\n", encoding="utf-8")
    print(f"\n{out['seconds']:.0f} s; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
