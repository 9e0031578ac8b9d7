"""Typed view of params.yaml, loaded once per process.

Unknown keys and bad values are rejected with a message that names the key, so a typo in
params.yaml fails at once instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.lib.catalog import PARAMS as PARAMS_FILE


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ReadFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet", "label_text"]
SplitName = Literal["train", "validation", "test"]


class SourceSpec(_Section):
    """One file or folder of a given split; unset fields take the ingest section's value."""

    path: str
    format: ReadFormat | None = None
    header: bool | None = None
    columns: list[str] | None = None
    quoting: Literal["minimal", "none"] | None = None
    encoding: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    label_map: dict[str, str] | None = None


class IngestParams(_Section):
    """Which dataset and how to read it. The layout keys have the readers' defaults, written
    only here: params.yaml and the profiles name a layout key only where a dataset differs."""

    source: str
    format: ReadFormat = "auto"
    header: bool = True
    columns: list[str] | None = None
    quoting: Literal["minimal", "none"] = "minimal"
    encoding: str = "utf-8"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = None
    cast_text: bool = False  # numbers in the text column are an error unless this is set
    splits: dict[SplitName, SourceSpec] | None = None
    labels: list[str] = Field(min_length=2)
    clean_text: bool
    dedupe: bool
    limit_rows: int | None = Field(gt=0)
    split_seed: int | None  # seed of the subsample and carved splits; None: the global seed
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)  # carved only where the source gives no split
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _check(self) -> IngestParams:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.splits is not None and "train" not in self.splits:
            raise ValueError(
                "splits must name at least a train file; validation and test are carved from it when absent"
            )
        return self


class CorpusSource(_Section):
    """One unlabelled source; unset layout keys take the readers' defaults (IngestParams')."""

    path: str  # a file or folder ($DATA_ROOT expands), or hf:<dataset>
    format: Literal["auto", "lines", "csv", "tsv", "jsonl", "parquet"] | None = None  # auto: .txt is lines
    header: bool | None = None
    columns: list[str] | None = None
    quoting: Literal["minimal", "none"] | None = None
    encoding: str | None = None
    text_column: str | None = None
    markup: Literal["wikitext"] | None = None  # wikitext: undo WikiText's @-@, <unk> and headings


class CorpusParams(_Section):
    """The unlabelled text pretraining reads (data/corpus), besides or instead of the training split's."""

    train_text: bool  # the labelled training split's text is part of the corpus
    sources: list[CorpusSource]
    min_chars: int = Field(ge=1)
    max_damaged_share: float = Field(ge=0, le=1)  # per source: more encoding damage than this fails the stage
    min_leak_words: int = Field(ge=1)  # a text containing a whole validation/test text this long is dropped
    shard_docs: int = Field(ge=1)  # texts per shard file

    @model_validator(mode="after")
    def _some_text(self) -> CorpusParams:
        if not self.train_text and not self.sources:
            raise ValueError("the corpus is empty: set train_text: true or name at least one source")
        return self


class DriftParams(_Section):
    """Limits on how far a new version of the same source may move from the last accepted one."""

    enabled: bool
    max_label_shift: float = Field(ge=0, le=1)  # total-variation distance of label shares
    max_length_shift: float = Field(ge=0)  # relative change of median / p90 text length
    min_vocab_overlap: float = Field(ge=0, le=1)  # share of new tokens seen in the old version
    max_row_ratio: float = Field(ge=1)  # new/old (or old/new) row count


class ValidateParams(_Section):
    min_chars: int = Field(ge=1)
    max_chars: int = Field(ge=1)
    max_duplicate_rate: float = Field(ge=0, le=1)
    min_rows_per_split: int = Field(ge=1)
    min_class_share: float = Field(ge=0, lt=1)
    max_quarantine_share: float = Field(ge=0, le=1)
    drift: DriftParams


class TokenizeParams(_Section):
    kind: Literal["bpe", "wordpiece"]
    vocab_size: int = Field(ge=100)
    min_frequency: int = Field(ge=1)
    lowercase: bool
    collapse_urls: bool
    max_length: int = Field(ge=8)
    fit_on: Literal["train", "corpus"]  # the text the tokenizer is trained on (ignored with pretrain.init_from)


Arch = Literal["transformer", "rnn", "lstm", "gru"]


class ModelParams(_Section):
    arch: Arch
    d_model: int = Field(ge=8)  # Transformer width; embedding width of the recurrent models
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)  # Transformer only
    d_ff: int = Field(ge=8)  # Transformer only
    d_hidden: int = Field(ge=8)  # recurrent only: width of every layer but the last
    max_positions: int = Field(ge=8)  # Transformer only
    position: Literal["learned", "rotary"]  # Transformer only: a position table, or rotary (RoPE)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelParams:
        if self.arch == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        return self


Device = Literal["auto", "cpu", "cuda"]


class _EngineParams(_Section):
    """How a training stage runs; none of these change what it computes, beyond float rounding."""

    device: Device
    precision: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool  # torch.compile the network body
    threads: Literal["auto"] | int  # CPU threads; auto: measured at start
    grad_accum_steps: int = Field(ge=1)  # batch_size is split into this many micro-batches
    nproc_per_node: int = Field(ge=1)  # >1: data-parallel (DDP) processes via torchrun

    @model_validator(mode="after")
    def _engine_fits(self):
        if isinstance(self.threads, int) and self.threads < 1:
            raise ValueError("threads must be 'auto' or a positive integer")
        if self.batch_size % (self.grad_accum_steps * self.nproc_per_node):
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum_steps x nproc_per_node "
                f"({self.grad_accum_steps} x {self.nproc_per_node})"
            )
        return self


class _TrainingParams(_EngineParams):
    """What both training stages have: the global batch, the optimizer's knobs, dropout."""

    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    grad_clip: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)  # pretrain: inside the network; finetune: body and head


# The objectives of models/objectives/ (a test holds these two in step with its registry).
ObjectiveName = Literal["mlm", "causal", "electra"]
CAUSAL_OBJECTIVES = frozenset({"causal"})  # the ones a recurrent body can learn: no look-ahead


class PretrainParams(_TrainingParams):
    objective: ObjectiveName
    block_size: int = Field(ge=8)
    max_steps: int = Field(ge=1)
    warmup_steps: int = Field(ge=0)
    mask_prob: float = Field(gt=0, le=0.5)  # share of positions masked (mlm, electra)
    mask_prob_final: float | None = Field(gt=0, le=0.5)  # set: the rate falls linearly to this by max_steps
    mask_token_share: float = Field(ge=0, le=1)  # mlm: of the masked positions, shown as [MASK] (BERT: 0.8)
    generator_width: float = Field(gt=0, le=1)  # electra: the generator's width, a share of d_model
    discriminator_weight: float = Field(gt=0)  # electra: the replaced-token loss's weight (paper: 50)
    log_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    # An earlier language model to continue from (a folder pretrain wrote, or models:/<name>@<alias>);
    # None: random weights. Its tokenizer and network shape are reused and must match params.
    init_from: str | None = Field(min_length=1)


class FinetuneParams(_TrainingParams):
    init: Literal["pretrained", "scratch"]
    seed: int | None  # head initialisation, batch order and dropout; None: the global seed
    max_labels: int | None = Field(gt=0)  # label budget: a stratified sample of this many training rows
    max_steps: int = Field(ge=1)  # the step budget; the best validation score within it is kept
    eval_every: int = Field(ge=1)  # optimizer steps between validation passes
    patience: int = Field(ge=1)  # validation passes without a gain before stopping
    warmup_ratio: float = Field(ge=0, lt=1)  # of max_steps
    lr_decay: float = Field(ge=1)  # discriminative LR: each lower layer group gets lr / lr_decay
    gradual_unfreeze: bool  # evaluation interval k trains the top k layer groups only (ULMFiT)


class EvaluateParams(_Section):
    baseline_max_features: int = Field(ge=10)
    # the TF-IDF baseline's inverse regularisation strengths: the best on validation is kept
    baseline_c: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    ece_bins: int = Field(ge=2)


class RegisterParams(_Section):
    # What MLflow accepts as a name and what stays one path segment: no "/", no "..".
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", min_length=1)
    alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    max_texts_per_request: int = Field(ge=1)  # the served model refuses larger requests


class BaseModelParams(_Section):
    """Where the base-model flow registers the language model it trains."""

    name: str = Field(min_length=1)
    alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")


class PromoteParams(_Section):
    """Gates a challenger must pass to become champion; both are scored on the same data."""

    min_accuracy: float = Field(ge=0, le=1)
    min_macro_f1: float = Field(ge=0, le=1)
    min_improvement: float = Field(ge=-1, le=1)  # challenger macro-F1 minus champion's
    max_recall_drop: float = Field(ge=0, le=1)  # largest allowed fall of any class's recall
    split: Literal["test", "validation"]  # the held-out split of data/validated both are scored on


class Params(_Section):
    seed: int
    ingest: IngestParams
    validate_: ValidateParams = Field(alias="validate")
    corpus: CorpusParams
    tokenize: TokenizeParams
    model: ModelParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    register_: RegisterParams = Field(alias="register")
    base_model: BaseModelParams
    promote: PromoteParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _budget_covers_classes(self) -> Params:
        if self.finetune.max_labels is not None and self.finetune.max_labels < len(self.ingest.labels):
            raise ValueError(
                f"finetune.max_labels ({self.finetune.max_labels}) is smaller than the number of classes "
                f"({len(self.ingest.labels)}): every class needs at least one labelled example"
            )
        return self

    @model_validator(mode="after")
    def _block_fits_positions(self) -> Params:
        if self.model.arch != "transformer":
            if self.pretrain.objective not in CAUSAL_OBJECTIVES:
                raise ValueError(
                    f"model.arch {self.model.arch!r} is a recurrent LM: set pretrain.objective to one of "
                    f"{sorted(CAUSAL_OBJECTIVES)}"
                )
            return self
        longest = max(self.pretrain.block_size, self.tokenize.max_length)
        if longest > self.model.max_positions:
            raise ValueError(
                f"model.max_positions ({self.model.max_positions}) must be at least "
                f"pretrain.block_size and tokenize.max_length ({longest})"
            )
        return self


def split_seed(params: Params) -> int:
    """The seed that draws the splits: fixed by `ingest.split_seed` when several training
    seeds must share one split (seed studies), else the global seed."""
    return params.ingest.split_seed if params.ingest.split_seed is not None else params.seed


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {len(err.errors())} bad value(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _refuse_braced_variables(node, where: str, path: Path) -> None:
    # `dvc exp run -S` composes params.yaml with OmegaConf, which resolves `${...}` itself and
    # fails on an environment variable; `$NAME` means the same to us and nothing to it.
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_braced_variables(value, f"{where}.{key}" if where else str(key), path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_braced_variables(value, f"{where}[{i}]", path)
    elif isinstance(node, str) and "${" in node:
        name = node.split("${", 1)[1].split("}", 1)[0]
        raise ParamsError(
            f"{path}: {where}: write ${name} instead of ${{{name}}} (dvc exp run -S cannot resolve braces)"
        )


def parse_params(raw: dict, path: Path = PARAMS_FILE) -> Params:
    _refuse_braced_variables(raw, "", path)
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(path, err)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root, or pass its path") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, path)
