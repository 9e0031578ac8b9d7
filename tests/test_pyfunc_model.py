import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from models.requests import _as_texts


def test_accepts_lists_arrays_series_and_frames():
    expected = ["a", "b"]
    for given in (
        ["a", "b"],
        np.array(["a", "b"]),
        pd.Series(["a", "b"]),
        pd.DataFrame({"text": ["a", "b"]}),
        pd.DataFrame({0: ["a", "b"]}),
    ):
        assert _as_texts(given) == expected


def test_rejects_non_strings_and_wrong_columns():
    with pytest.raises(MlflowException, match=r"item\(s\) \[1\] are not"):
        _as_texts(["ok", None])
    with pytest.raises(MlflowException, match="'text' column"):
        _as_texts(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(MlflowException, match="list of strings"):
        _as_texts("just one string")
