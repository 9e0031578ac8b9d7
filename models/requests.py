"""What a registered model accepts: a list/array/Series of strings or a DataFrame with a `text`
column, at least one and at most the model's limit. Errors are MLflow's "invalid parameter"
kind, which the scoring server answers with a 4xx. Shared by every registered model."""

import mlflow
import numpy as np
import pandas as pd

TEXT_COLUMN = "text"


def texts_of(model_input, max_texts: int) -> list[str]:
    """The request's texts, or a 4xx-kind error saying what is wrong with it."""
    texts = _as_texts(model_input)
    if not texts:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value("no texts: send at least one string")
    if len(texts) > max_texts:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"{len(texts)} texts in one request; the limit is {max_texts}: split the request"
        )
    return texts


def _as_texts(model_input) -> list[str]:
    """Accept a list/array/Series of strings or a DataFrame with a `text` column; reject the rest."""
    if isinstance(model_input, pd.DataFrame):
        # A plain list arrives here as a one-column frame named 0.
        if TEXT_COLUMN in model_input.columns:
            values = model_input[TEXT_COLUMN].tolist()
        elif list(model_input.columns) == [0]:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(
                f"input must have a '{TEXT_COLUMN}' column; got {list(model_input.columns)}"
            )
    elif isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        values = list(model_input)
    else:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"input must be a list of strings or a DataFrame with a '{TEXT_COLUMN}' column; got {type(model_input).__name__}"
        )
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"every input must be a string; item(s) {bad[:5]} are not"
        )
    if problem := text_problem(values):
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(problem)
    return values


def text_problem(texts: list[str]) -> str | None:
    """The rule training applies to its texts, at serving time: none may be empty or only
    whitespace (there is nothing to classify, and a confident label would be made up), and each
    must be encodable as UTF-8 (a lone surrogate from JSON is not). None when all are fine."""
    for i, text in enumerate(texts):
        if not text.strip():
            return f"item {i} is empty or only whitespace: there is nothing to classify"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"item {i} cannot be encoded as UTF-8 ({err.reason} at character {err.start})"
    return None
