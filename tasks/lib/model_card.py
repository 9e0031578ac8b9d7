"""A short model card for each registered version, generated from what the stages wrote.

Markdown, so it reads the same as the version's description in the MLflow UI, as the
`model_card.md` artifact of the registering run, and in a terminal.
"""

from __future__ import annotations

from tasks.lib import catalog
from tasks.lib.common import read_json
from tasks.lib.evaluation_report import baseline_tuning


def known_limits(metrics: dict, finetuned: dict, tokenize_max_length: int) -> list[str]:
    """Limits a user should know before trusting the model, from its own numbers."""
    t, b = metrics["test"], metrics["baseline"]
    limits = [
        f"Texts longer than {tokenize_max_length} tokens are cut: only their start is read.",
        "Trained on one corpus; accuracy on text from another domain is unmeasured.",
    ]
    if t["macro_f1"] <= b["macro_f1"]:
        limits.insert(
            0,
            f"Does not beat the TF-IDF + logistic-regression baseline on macro-F1 "
            f"({t['macro_f1']:.4f} vs {b['macro_f1']:.4f}).",
        )
    weakest = min(t["per_class"], key=lambda c: t["per_class"][c]["recall"])
    limits.append(f"Weakest class: `{weakest}` (recall {t['per_class'][weakest]['recall']:.3f}).")
    if t["ece"] > 0.05:
        limits.append(f"Probabilities are not well calibrated (ECE {t['ece']:.3f}): treat them as scores.")
    if finetuned.get("init") == "scratch":
        limits.append("Trained from scratch (finetune.init: scratch): no language-model pretraining.")
    return limits


def render(
    name: str,
    version: str,
    metrics: dict,
    finetuned: dict,
    pretrained: dict | None,
    snapshot: dict,
    lineage: dict,
    tokenize_max_length: int,
) -> str:
    t, b = metrics["test"], metrics["baseline"]
    cfg = finetuned["model_config"]
    arch = cfg.get("arch", "transformer")
    shape = f"{cfg['n_layers']} layers × {cfg['d_model']} wide"
    if pretrained:
        pre = pretrained.get("pretrain", {})
        how = (
            f"{arch} ({shape}), pretrained with {pretrained.get('objective', pre.get('objective', 'mlm'))} LM "
            f"for {pretrained.get('step')} steps, then fine-tuned on {finetuned['labelled_rows']:,} "
            f"labelled rows (the weights of step {finetuned.get('best_step')} of {finetuned.get('steps')} kept: "
            "best validation macro-F1)"
        )
        if "probe_accuracy" in pretrained:
            how += (
                f"; before fine-tuning, a linear probe of the language model's frozen features scored "
                f"validation accuracy {pretrained['probe_accuracy']:.4f} (macro-F1 {pretrained['probe_macro_f1']:.4f}, "
                f"{pretrained['probe_rows']:,} labelled rows)"
            )
    else:
        how = f"{arch} ({shape}), fine-tuned"
    rows = ", ".join(f"{k} {v:,}" for k, v in snapshot.get("rows", {}).items())
    # Lists, not tables: the registry UI renders a version's description without table support.
    per_class = "\n".join(
        f"- `{c}`: precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f} "
        f"(baseline F1 {b['per_class'][c]['f1']:.3f}); {m['support']:,} test rows"
        for c, m in t["per_class"].items()
    )
    limits = "\n".join(f"- {line}" for line in known_limits(metrics, finetuned, tokenize_max_length))
    return f"""# Model card: {name} version {version}

Text classifier over {len(finetuned["labels"])} labels: {", ".join(f"`{x}`" for x in finetuned["labels"])}.
Input: raw strings; output: a label and one probability per class.

## Data
- Source: {snapshot.get("source", "unknown")}
- Rows after validation: {rows}
- Data version (DVC md5 of `data/validated`): `{lineage["data_hash"]}`; restore this version's
  data and checkpoints into a clone with `{lineage["restore"]}`

## Training
- Network: {how}.
- Pretraining started from: {lineage.get("base_model", "none")} (`none`: random weights).
- Code: git commit `{lineage["git_commit"]}`; seed {finetuned.get("seed")}.
- Params: digest `{lineage["params_digest"]}`; the values are the registering run's `params.json`,
  and what each stage was built with its `dvc.lock`.

## Results on the test split ({metrics["test_rows"]:,} rows)

- Model: accuracy {t["accuracy"]:.4f}, macro-F1 {t["macro_f1"]:.4f}, ECE {t["ece"]:.4f}
- Baseline, on the same rows: accuracy {b["accuracy"]:.4f}, macro-F1 {b["macro_f1"]:.4f}.
  {baseline_tuning(b)}

Per class:

{per_class}

## Known limits
{limits}
"""


def render_from_workspace(name: str, version: str, lineage: dict, tokenize_max_length: int) -> str:
    pretrained_meta = catalog.PRETRAINED / catalog.META
    return render(
        name,
        version,
        read_json(catalog.METRICS),
        read_json(catalog.FINETUNED / catalog.META),
        read_json(pretrained_meta) if pretrained_meta.exists() else None,
        read_json(catalog.SNAPSHOT) if catalog.SNAPSHOT.exists() else {},
        lineage,
        tokenize_max_length,
    )
