"""The registered model: raw strings in, labels and class probabilities out.

Logged as an MLflow "model from code": MLflow stores this file and runs it at load time
instead of unpickling an object, and `models/` travels with it as code, so the model loads
without this repository on the path. Weights load from safetensors: nothing is unpickled.
Only `models/` may be imported here: `tasks/` does not travel with the model. Encoding and
prediction are `models.inference`, the code `evaluate` scores the test split with.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from safetensors.torch import load_model
from tokenizers import Tokenizer

from models.build import build_classifier
from models.checksum import code_sha256, file_sha256
from models.inference import encode, predict_proba
from models.requests import texts_of


class ModelLoadError(RuntimeError):
    """The model's artifacts are missing or do not match what was registered."""


class TextClassifier(PythonModel):
    def load_context(self, context) -> None:
        for name in ("config", "tokenizer", "weights"):
            if name not in context.artifacts or not Path(context.artifacts[name]).is_file():
                raise ModelLoadError(f"the model's '{name}' artifact is missing")
        self._verify_config_and_code(context)
        try:
            meta = json.loads(Path(context.artifacts["config"]).read_text())
        except ValueError as err:
            raise ModelLoadError(f"the model's config artifact is not valid JSON ({err})") from None
        # A flipped byte in the weights still loads, and an edited tokenizer still encodes; the
        # checksums taken at registration do not match.
        for name in ("weights", "tokenizer"):
            expected = meta.get(f"{name}_sha256")
            if expected and file_sha256(context.artifacts[name]) != expected:
                raise ModelLoadError(f"the model's {name} do not match the checksum recorded at registration")
        self.labels = meta["labels"]
        self.max_texts = meta.get("max_texts_per_request", 1000)
        self.tokenizer = Tokenizer.from_file(context.artifacts["tokenizer"])
        self.model = build_classifier(meta["model_config"], len(self.labels))
        load_model(self.model, context.artifacts["weights"])
        self.model.eval()

    @staticmethod
    def _verify_config_and_code(context) -> None:
        """The config (labels, network) and the code folder shipped with the model must be the
        ones registered; their digests are in the model's MLmodel file (its model_config)."""
        expected = context.model_config or {}
        config = Path(context.artifacts["config"])
        if expected.get("config_sha256") and file_sha256(config) != expected["config_sha256"]:
            raise ModelLoadError("the model's config (labels, network) does not match the checksum recorded at registration")
        code = config.parents[1] / "code" / "models"  # <model>/artifacts/config.json -> <model>/code/models
        if expected.get("code_sha256") and (not code.is_dir() or code_sha256(code) != expected["code_sha256"]):
            raise ModelLoadError("the model's code does not match the checksum recorded at registration")

    # The DataFrame hint tells MLflow to keep the explicit signature rather than infer one;
    # lists, arrays and Series are accepted too (see models.requests).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = texts_of(model_input, self.max_texts)
        proba = predict_proba(self.model, encode(self.tokenizer, texts))
        if not np.isfinite(proba).all():  # NaN is not JSON: never answer with it
            raise RuntimeError("the model's outputs are not finite numbers: its weights are broken")
        out = pd.DataFrame({"label": [self.labels[i] for i in proba.argmax(1)]})
        for i, name in enumerate(self.labels):
            out[f"proba_{name}"] = proba[:, i].astype(np.float64)
        return out


set_model(TextClassifier())
